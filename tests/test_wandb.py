"""W&B: offline without a login, never blocking; the offline run file holds what metrics.jsonl holds."""
import json

import pytest

from wandb_records import config, history


def test_offline_run_is_read_back_and_matches_metrics_jsonl(tiny_run, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    s = tiny_run("wandb.enabled=true", "wandb.project=test-proj", "wandb.tags=[a,b]", "seed=4")
    out = tmp_path / "run"
    assert s["wandb_sync"] and s["wandb_sync"].startswith("wandb sync ") and str(out / "wandb") in s["wandb_sync"]
    rows = history(out / "wandb")
    local = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = {(r["_step"], k): v for r in rows for k, v in r.items() if not k.startswith("_")}
    last_task = {rec["step"]: rec["task"] for rec in local}  # W&B merges records of one step: the last task wins
    for rec in local:
        for key, value in rec.items():
            if key == "task":
                assert logged[(rec["step"], key)] == last_task[rec["step"]]
            elif key != "step":
                assert logged[(rec["step"], key)] == pytest.approx(value), key
    # the accuracy matrix went up as a table, the resolved config as the run config
    (table,) = [r for r in rows if "eval/acc_matrix/_type" in r]
    assert table["eval/acc_matrix_heatmap/_type"] == "image-file"
    assert table["eval/acc_matrix/_type"] == "table-file" and table["eval/acc_matrix/nrows"] == 6  # 3+2+1 entries
    cfg = config(out / "wandb")
    assert cfg["seed"] == 4 and cfg["agent"]["hidden"] == [32]
