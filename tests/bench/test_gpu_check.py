"""The GPU check script, on the CPU provider: every part's code runs, the CUDA-only parts say why not."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from hotwire.bench import gpu_check as gpu


def section_rows(text: str, title: str) -> list[list[str]]:
    """The data rows of the table under the `### title...` heading."""
    block = text.split(f"### {title}", 1)[1].split("###", 1)[0]
    rows = [line for line in block.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[1:]]


def test_the_check_runs_every_part_on_the_cpu_provider_and_lists_what_it_could_not(tmp_path: Path):
    output = tmp_path / "RESULTS.md"
    arguments = ["--provider", "cpu", "--batches", "1,3", "--seconds", "0.05", "--output", str(output)]
    assert gpu.main(arguments) == 0
    text = output.read_text()
    assert "python -m hotwire.bench.gpu_check --provider cpu --batches 1,3" in text
    sweep = section_rows(text, "convnet")
    assert [row[0] for row in sweep] == ["1", "3"] and all(float(row[1]) > 0 for row in sweep)
    graphs = section_rows(text, "CUDA graphs on/off")
    assert [row[0] for row in graphs] == ["1", "3"]
    assert all(float(row[4]) < 1e-4 for row in graphs)  # the bucketed binding gives session.run's logits
    slicing = section_rows(text, "time-slicing")
    assert [row[0] for row in slicing] == ["1", "2"] and all(float(row[1]) > 0 for row in slicing)
    assert 'hotwire_worker_info{worker="0",device="0"' in text  # the launcher's worker, labelled by device
    if not gpu.cuda_in_onnxruntime():
        assert "- GPU tests: not asked for (--gpu-tests)" in text


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="this onnxruntime has the CUDA provider"
)
def test_asking_for_cuda_without_it_is_refused_and_auto_skips_the_onnxruntime_parts(tmp_path: Path, capsys):
    assert gpu.main(["--provider", "cuda", "--output", str(tmp_path / "r.md")]) == 2
    assert "no CUDAExecutionProvider" in capsys.readouterr().err
    assert not (tmp_path / "r.md").exists()
    assert gpu.main(["--seconds", "0.05", "--output", str(tmp_path / "auto.md")]) == 0
    text = (tmp_path / "auto.md").read_text()
    assert "provider for the ORT parts: none" in text and "### convnet" not in text
    for part in ("convnet batch sweep", "CUDA graphs on/off", "time-slicing"):
        assert f"- {part}: this onnxruntime has no CUDAExecutionProvider" in text
