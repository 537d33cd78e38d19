"""Studies: many runs of `train`, and the statistics that read them.

`python -m study run STUDY --workdir DIR` runs a study's arms x seeds as
``python -m train`` processes (`study.runner`); `python -m study summarize
DIR` reads their workdirs (`train.record`) into a summary (`study.report`,
`study.statistics`); `python -m study.plot RUN_DIR...` draws runs.
"""
