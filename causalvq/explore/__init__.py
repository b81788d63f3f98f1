"""The exploration API behind the Gradio explorer (``app.py``), one room per job.

- ``checkpoints``: loading a checkpoint folder or Hub repo id (and its factor probe), the dropdown's choices, the
  matching dataset;
- ``images``: uploaded files and any image converted to the model input (``InputError`` for bad input);
- ``explorer``: the ``Explorer`` (every number the app shows); ``views``: the frozen dataclasses it returns;
- ``edges``: which edges of the learned graph a panel shows (threshold, top-k parents, one node's neighbourhood)
  and how many there are, so the caption, the drawing and the ego table agree;
- ``drawing``: code grids, the graph's heat map and node–link drawing, retrieval bars, traversal grids and GIFs
  (extrapolated cells shaded).
"""
