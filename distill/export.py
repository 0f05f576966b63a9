"""Export a checkpoint as TorchScript and ONNX, normalisation included.

The exported graph takes float32 (N, 3, S, S) RGB in [0, 1] at the checkpoint's input size S
and returns logits; OUT/model.json records class names, input size and the normalisation.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from distill.checkpoints import load_model


class NormalizedModel(nn.Module):
    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def export_checkpoint(
    checkpoint, out_dir, formats=("torchscript", "onnx"), **load_kwargs
) -> dict[str, Path]:
    model, meta = load_model(checkpoint, **load_kwargs)
    wrapped = NormalizedModel(model, meta.mean, meta.std).eval()
    example = torch.rand(2, 3, meta.input_size, meta.input_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if "torchscript" in formats:
        with torch.no_grad():
            traced = torch.jit.trace(wrapped, example)
        written["torchscript"] = out_dir / "model.torchscript.pt"
        traced.save(str(written["torchscript"]))
    if "onnx" in formats:
        written["onnx"] = out_dir / "model.onnx"
        torch.onnx.export(
            wrapped,
            (example,),
            str(written["onnx"]),
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=65536)}},
            external_data=False,
        )
    written["json"] = out_dir / "model.json"
    info = {
        **meta.to_dict(),
        "input": f"float32 (N, 3, {meta.input_size}, {meta.input_size}) RGB in [0, 1]",
        "output": f"logits (N, {meta.num_classes})",
        "files": {k: v.name for k, v in written.items() if k != "json"},
    }
    written["json"].write_text(json.dumps(info, indent=2) + "\n")
    return written
