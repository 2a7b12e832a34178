"""bench/torch_paths.py as a user runs it (small options): CPU rows with images/s, the plain eager stage
beside the fp32 path, the per-layer agreement table, and a plain statement when no GPU is present (GPU rows
when one is)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_prints_rates_agreement_and_the_gpu_situation():
    out = subprocess.run(
        [sys.executable, "bench/torch_paths.py", "--architecture", "resnet18", "--stage-layer", "layer1",
         "--unit-layer", "layer2", "--agreement-layers", "layer1", "layer2", "--cpu-images", "2",
         "--agreement-images", "3", "--repeats", "1", "--no-deepsim"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    if torch.cuda.is_available():
        assert re.search(r"^GPU: ", text, re.M) and re.search(r"^cuda\s+tf32\s+40\s", text, re.M)
    else:
        assert "GPU: none present (torch.cuda.is_available() is False): CPU rows only" in text
        assert not re.search(r"^cuda", text, re.M)
    assert re.search(r"^cpu\s+eager\s+2\s+[\d.]+", text, re.M)
    fp32 = re.search(r"^cpu\s+fp32\s+2\s+nan\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", text, re.M)
    assert fp32 and all(float(v) > 0 for v in fp32.groups())
    assert re.search(r"stage speed vs the plain eager path, same run: cpu fp32 x[\d.]+", text)
    rows = re.findall(r"^cpu\s+bf16\s+(layer\d)\s+([\d.e+-]+)\s+([\d.-]+)\s+(yes|NO)$", text, re.M)
    if torch.backends.mkldnn.is_available():
        assert [r[0] for r in rows] == ["layer1", "layer2"]
        assert all(0 < float(r[1]) <= 0.05 and r[3] == "yes" for r in rows)
