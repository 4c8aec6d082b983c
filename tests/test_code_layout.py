"""The code's layout: module names say what they are, so no two modules share a file name."""
from __future__ import annotations

from collections import defaultdict

from conftest import REPO


# A package's `base.py` (its base classes) is a convention, not a clash; the thin `flows/` are
# named after the library code they run, on purpose.
CONVENTIONAL = {"__init__.py", "base.py"}


def test_no_two_modules_share_a_file_name():
    seen: dict[str, list[str]] = defaultdict(list)
    for package in ("nexus_gen", "eval"):
        for path in sorted((REPO / package).rglob("*.py")):
            if path.name not in CONVENTIONAL:
                seen[path.name].append(str(path.relative_to(REPO)))
    shared = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not shared, f"modules sharing a file name (rename the less central one): {shared}"


def test_detection_and_position_rule_live_in_one_neutral_module():
    import eval.geneval.rules as rules
    import nexus_gen.detection as detection
    import nexus_gen.scenes.detect as scenes_detect
    import nexus_gen.scenes.prompts as scenes_prompts
    import nexus_gen.scenes.qa as scenes_qa

    # the scenes world and GenEval's scoring import the one type and the one rule, not copies
    assert scenes_detect.Detection is rules.Detection is detection.Detection
    for module in (rules, scenes_prompts, scenes_qa):
        assert module.relative_position is detection.relative_position
        assert module.RELATIONS is detection.RELATIONS
    # the neutral module depends on neither side
    src = (REPO / "nexus_gen" / "detection.py").read_text(encoding="utf-8")
    assert not any(s in src for s in ("nexus_gen.scenes", "nexus_gen.scoring", "from eval", "import eval"))
