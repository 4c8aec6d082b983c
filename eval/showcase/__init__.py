"""The CPU showcase (issue 17): a tiny Nexus-Gen trained on the scenes world through the project's
own build flow, `train` stages, pre-compute and benchmarks, with learning curves and a report."""
