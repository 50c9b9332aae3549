"""Resolve every model configuration the repository ships and print them as JSON, with their hashes,
so that two versions of kge.config can be compared (issue 14: the typed configuration stores and
hashes exactly what the dict-based one did).

    BEFORE/venv/bin/python benchmarks/compare_configs.py BEFORE > before.json
    python benchmarks/compare_configs.py . > after.json
    python benchmarks/compare_configs.py --diff before.json after.json

Covers config.yaml's models and the 85-model recipe, each at full size and under the recipe's
scale-mini option: the stored dict (``to_dict()`` of a typed config, the dict itself of an older
version) as JSON text, key order included, and ``config_hash``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml


def resolved(repo: Path) -> dict[str, list[str]]:
    from kge.config import config_hash, deep_merge, resolve_model_config, scale_settings

    scale = yaml.safe_load((repo / "workflow/ensembles/scale-mini.yaml").read_text())["scale"]
    out = {}
    for name, path in (("default", repo / "config.yaml"), ("recipe", repo / "workflow/ensembles/wikikg90mv2-85.yaml")):
        pipeline = yaml.safe_load(path.read_text())
        for model, settings in pipeline["models"].items():
            merged = deep_merge(pipeline.get("model_defaults", {}), settings or {})
            for tag, option in (("full", None), ("scale-mini", scale)):
                config = resolve_model_config(scale_settings(merged, option), where=model)
                stored = config.to_dict() if hasattr(config, "to_dict") else config
                out[f"{name}/{model}/{tag}"] = [json.dumps(stored), config_hash(config)]
    return out


def main() -> int:
    if sys.argv[1:2] == ["--diff"]:
        a, b = (json.loads(Path(p).read_text()) for p in sys.argv[2:4])
        differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        print(f"{len(a)} and {len(b)} configurations; {len(differ)} differ" + "".join(f"\n  {k}" for k in differ))
        return 1 if differ else 0
    print(json.dumps(resolved(Path(sys.argv[1]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
