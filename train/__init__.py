"""causalvq's training package: recipes, the two-stage loop, checkpoints, releases and the CLI.

A thin layer over the library (``causalvq``): it draws data with ``causalvq.data``, optimises the objectives of
``causalvq.model.CausalVQ`` and writes ``save_pretrained`` releases. The library never imports this package.
Entry point: ``python -m train --help`` (``train.cli``).
"""
