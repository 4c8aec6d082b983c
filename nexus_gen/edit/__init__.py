"""Building edit triplets and unified training sets from recipes: recipe -> plan -> shards
(see `build.py` for the run, `execute.py` for one shard, `backends/` for the edit makers)."""
