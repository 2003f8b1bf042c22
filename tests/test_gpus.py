"""The GPU type table: lookups, device-name normalisation, and agreement with the MFU table that
train_template/prepare.py keeps for itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mcp_server.domain import gpus
from mcp_server.domain.errors import InvalidInput

PREPARE = Path(__file__).resolve().parent.parent / "train_template" / "prepare.py"

# What nvidia-smi / torch.cuda.get_device_name() print for each listed type.
DEVICE_NAMES = {
    "NVIDIA H100 80GB HBM3": "H100",
    "NVIDIA H200": "H200",
    "NVIDIA A100-SXM4-80GB": "A100-80GB",
    "NVIDIA A100-SXM4-40GB": "A100",
    "NVIDIA L40S": "L40S",
    "NVIDIA L4": "L4",
    "NVIDIA A10G": "A10G",
    "NVIDIA GeForce RTX 4090": "RTX4090",
    "NVIDIA GeForce RTX 3090": "RTX3090",
    "NVIDIA B200": "B200",
}


def test_every_required_type_is_listed() -> None:
    names = set(gpus.known_names())
    assert {"H100", "H200", "A100-80GB", "A100", "L40S", "L4", "A10G", "RTX4090", "RTX3090", "B200", "CPU"} <= names
    cpu = gpus.lookup("cpu")
    assert cpu.name == "CPU" and cpu.peak_bf16_tflops is None
    for g in gpus.GPU_TYPES:
        if g.name != "CPU":
            assert g.memory_gib and g.peak_bf16_tflops and g.bandwidth_tbs and g.price_per_hour, g.name


@pytest.mark.parametrize("alias, name", [
    ("h100", "H100"), ("H100-SXM", "H100"), ("a100-80gb", "A100-80GB"), ("A100_80GB", "A100-80GB"),
    ("a100", "A100"), ("rtx 4090", "RTX4090"), ("RTX-3090", "RTX3090"), ("l40s", "L40S"), ("L4", "L4"),
    ("nvidia h200", "H200"), ("b200", "B200"), ("a10g", "A10G"), ("Cpu", "CPU"),
])
def test_lookup_is_tolerant_to_case_and_aliases(alias: str, name: str) -> None:
    assert gpus.lookup(alias).name == name


def test_unknown_type_is_a_clear_error() -> None:
    with pytest.raises(InvalidInput, match="unknown GPU type 'TPUv5'.*H100.*A100-80GB"):
        gpus.lookup("TPUv5")
    assert gpus.find("") is None and gpus.find("A10") is None


@pytest.mark.parametrize("device, name", sorted(DEVICE_NAMES.items()))
def test_device_names_normalise(device: str, name: str) -> None:
    assert gpus.normalize_device_name(device) == name


def test_a100_memory_disambiguates_and_unknown_devices_keep_their_name() -> None:
    assert gpus.normalize_device_name("NVIDIA A100-PCIE", 81920) == "A100-80GB"
    assert gpus.normalize_device_name("NVIDIA A100-PCIE", 40960) == "A100"
    assert gpus.normalize_device_name("NVIDIA L40") == "L40"          # not L40S, not L4
    assert gpus.normalize_device_name("Tesla T4") == "TESLA-T4"


def _prepare_table() -> list[tuple[str, float]]:
    """GPU_PEAK_BF16_TFLOPS from prepare.py, read without importing it (it imports torch)."""
    if not PREPARE.is_file():
        pytest.skip("train_template/prepare.py is not there yet")
    for node in ast.parse(PREPARE.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "GPU_PEAK_BF16_TFLOPS"
                                                for t in node.targets):
            return [(str(k), float(v)) for k, v in ast.literal_eval(node.value)]
    pytest.skip("prepare.py has no GPU_PEAK_BF16_TFLOPS table yet")


def test_peak_tflops_agree_with_prepare_py() -> None:
    table = _prepare_table()
    disagreements = []
    for device, name in DEVICE_NAMES.items():
        # prepare.py's rule (its comment): first key that is a case-insensitive substring of the name
        theirs = next((tf for key, tf in table if key.lower() in device.lower()), None)
        if theirs is None:
            continue  # not listed there: nothing to agree on
        ours = gpus.lookup(name).peak_bf16_tflops
        if abs(ours - theirs) > 0.01 * theirs:
            disagreements.append(f"{name} ({device}): gpus.py {ours}, prepare.py {theirs}")
    assert not disagreements, "peak bf16 TFLOP/s differ: " + "; ".join(disagreements)
