"""The soak test, short: benchmarks/soak.py against a real server on loopback with 300 requests
from 4 clients, 10% malformed, a hot reload mid-way: no 5xx, no failed well-formed request, every
malformed one answered as expected, and /metrics counting exactly what the clients sent."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server needs the 'serve' extra (scripts/setup.sh installs it)")
pytest.importorskip("prometheus_client", reason="/metrics needs the 'serve' extra (scripts/setup.sh installs it)")

from .checkpoints import trained_run, untrained_checkpoint  # noqa: E402

SOAK = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"


def test_short_soak(synthetic_data, tmp_path):
    a = trained_run(synthetic_data, tmp_path / "run-a", seed=0) / "best"
    b = untrained_checkpoint(synthetic_data, tmp_path / "ck-b", seed=7)
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, str(SOAK), "--model", str(a), "--reload-model", str(b), "--work",
                           str(tmp_path / "work"), "--requests", "300", "--clients", "4", "--warmup", "30",
                           "--max-seconds", "120", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert all(res["targets"].values()), res["targets"]
    assert res["requests_sent"] == 300 and res["5xx"] == 0 and res["failed_well_formed"] == 0
    assert 10 <= res["malformed"] <= 60  # 10% of 300, drawn
    assert sum(res["by_status"].values()) == 300 and set(res["by_status"]) >= {"200", "400", "413", "422"}
    # /metrics: the delta over the run equals the clients' counts, per method, route and status
    assert res["metrics"]["mismatch_with_clients"] == {}
    counted = res["metrics"]["requests_delta_by_method_endpoint_status"]
    assert counted["POST /recommend 413"] == res["malformed_by_kind"].get("oversized_declared", 0) \
        + res["malformed_by_kind"].get("oversized_chunked", 0) > 0
    # the reload swapped models while traffic flowed; the bad one was refused
    assert res["reload"]["status"] == 200 and res["reload"]["bad"]["status"] == 422
    assert set(res["answered_by_generation"]) == {"1", "2"} and res["stale_after_reload"] == 0
    assert res["metrics"]["reloads"] == {"ok/http": 1.0, "refused/http": 1.0}
    assert res["rss_kib"]["start"] > 0 and res["rss_kib"]["growth_pct"] < 10
    assert res["access_log_lines"] == res["requests_counted_in_metrics"]
