"""The keys of a search (``--tune``) itself: they pick and place trials and never change what a
trial computes, so no stage hashes them. A module of its own, apart from :mod:`cprec_recbole.tune`
(which imports the pipelines), so that the stages which leave them out can import it."""

TUNE_KEYS = (
    *("tune", "tune_space", "ray_address"),
    *("tune_cpus_per_trial", "tune_gpus_per_trial", "tune_workers_per_trial"),
)
