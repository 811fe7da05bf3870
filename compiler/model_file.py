"""Load a model file: the `llmc compile model.py` convention.

A model file is a Python file that defines, at module level:
- `model`: a torch.nn.Module (or a zero-argument function returning one), and
- `example_inputs`: a tuple of tensors, or a dict of keyword inputs (`input_ids`,
  `attention_mask`, ...), or a zero-argument function returning one.
The file's own folder is on sys.path while it loads, as with `python model.py`.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import torch

from llmc.errors import ModelFileError


def _run(path: Path) -> dict:
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    sys.path.insert(0, str(path.resolve().parent))
    try:
        return runpy.run_path(str(path), run_name="__llmc_model__")
    except SystemExit as error:
        raise ModelFileError(f"{path}: the model file called exit({error.code})") from None
    except Exception as error:
        raise ModelFileError(f"{path}: the model file raised {type(error).__name__}: {error}") from None
    finally:
        sys.path.remove(str(path.resolve().parent))


def load_module_attribute(path: Path, name: str = "model") -> torch.nn.Module:
    """The torch.nn.Module a model file defines as `name` (`llmc generate` needs no example inputs)."""
    model = _resolve(_run(Path(path)), name, Path(path))
    if not isinstance(model, torch.nn.Module):
        raise ModelFileError(f"{path}: `{name}` must be a torch.nn.Module, got {type(model).__name__}")
    return model


def load_model_file(path: str | Path) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...] | dict]:
    path = Path(path)
    namespace = _run(path)
    model = _resolve(namespace, "model", path)
    inputs = _resolve(namespace, "example_inputs", path)
    if not isinstance(model, torch.nn.Module):
        raise ModelFileError(f"{path}: `model` must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if isinstance(inputs, dict) and all(isinstance(k, str) and isinstance(x, torch.Tensor) for k, x in inputs.items()):
        return model, dict(inputs)
    if not isinstance(inputs, tuple | list) or not all(isinstance(x, torch.Tensor) for x in inputs):
        raise ModelFileError(f"{path}: `example_inputs` must be a tuple of tensors or a dict of keyword tensors")
    return model, tuple(inputs)


def _resolve(namespace: dict, name: str, path: Path):
    if name not in namespace:
        raise ModelFileError(f"{path}: defines no `{name}` (see the model-file convention in README.md)")
    value = namespace[name]
    if callable(value) and not isinstance(value, torch.nn.Module):
        try:
            value = value()
        except Exception as error:
            raise ModelFileError(f"{path}: `{name}()` raised {type(error).__name__}: {error}") from None
    return value
