"""The kit's experiment machinery: everything the notebooks, the main job and the benches run.

The method (:mod:`dplib`: gates, settings, vi, criteria, surgery, budget, ...) is what a user
imports to prune their own network; this subpackage is what the kit runs to reproduce the paper
and to measure: the method never imports it.

==============  ==================================================================================
profiles        the ``smoke`` / ``cpu`` / ``paper`` presets; ``resolve`` checks parameters first
paths           where ``runs/``, ``figures/`` and ``notebooks/`` are
cache           :func:`~dplib.experiments.cache.cached`: the one caching helper of every stage
experiment      the one path: an experiment's configuration; pretrain, score, prune-and-fine-tune
stages          the notebooks' stages: one notebook experiment through that path
compare         criteria compared at a MAC budget: runs the comparison and summarises it
study           what makes Dirichlet importance work: the screen, the pairs, the finals
synthetic       the synthetic check (a planted importance recovered)
figures         every figure (draws only)
reports         every table (Markdown, CSV, DataFrames)
publish         ``04_figures``: reads ``runs/``, writes ``figures/``
runner          the main job: the notebooks through papermill
==============  ==================================================================================
"""
