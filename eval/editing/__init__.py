"""The editing benchmark: edit items from unified shards, a build run's test split, the scenes
world, MagicBrush / Emu Edit tables, GEdit-Bench and ImgEdit-Bench (`edit_sources`, `gedit`,
`imgedit`); editors behind one adapter (`editors`); MagicBrush / Emu Edit metrics and the scenes'
exact success (`edit_run`); optional VLM judges (`edit_judge`); the report (`edit_report`)."""
