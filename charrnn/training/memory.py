"""How much memory a run needs and whether the machine has it, known before anything is allocated.

A size that cannot fit (`--num-hiddens 40000` on a 24 GB machine, a checkpoint that declares
gigabytes) must end in one line, not in the kernel's OOM kill. The estimate is written from the
model's parameter shapes and recompute.bptt_memory_bytes, so that it follows the model: a run
holds the parameters, their gradients, the optimizer's scratch and slots (4 + slots copies), the
float64 draw of the largest parameter at initialisation, the BPTT buffers of a training window
(stored or recomputed, as choose_bptt_memory decides) and two evaluation workspaces (the chunks
of evaluate.EVAL_ROWS x model.EVAL_CHUNK_STEPS and the last, shorter one).
"""
import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from charrnn.base.errors import CharrnnError
from charrnn.infer.evaluate import EVAL_ROWS
from charrnn.nn.cells import CELL_CLASSES
from charrnn.nn.model import EVAL_CHUNK_STEPS, RNNLM
from charrnn.nn.optim import OPTIMIZERS
from charrnn.nn.recompute import bptt_memory_bytes, choose_bptt_memory, default_segment_steps

CELL_KEYS = ("cell", "num_layers", "dropout")  # model settings bptt_memory_bytes may take
MEMORY_ADVICE = "try a smaller --num-hiddens, --batch-size or --num-steps"


def param_shapes(spec) -> dict:
    """Name -> shape of the parameters of the model RNNLM(**spec) would build, without building it."""
    return RNNLM.param_shapes(SimpleNamespace(**spec))


def state_shape(spec, batch_size) -> tuple:
    """The shape of the state the model RNNLM(**spec) carries for `batch_size` rows, without building it."""
    cell = CELL_CLASSES[spec["cell"]]
    return RNNLM.state_shape(SimpleNamespace(**spec, num_states=cell.num_states), batch_size)


def param_bytes(spec) -> int:
    itemsize = np.dtype(spec["dtype"]).itemsize
    return sum(math.prod(shape) for shape in param_shapes(spec).values()) * itemsize


def checkpoint_bytes(spec, optimizer) -> int:
    """Bytes of the arrays of a checkpoint of the model `spec` trained by `optimizer` (a name):
    the parameters and the optimizer's slots."""
    return param_bytes(spec) * (1 + len(OPTIMIZERS[optimizer].slot_names))


def window_bytes(spec, batch_size, num_steps, bptt_memory="store", budget_bytes=None) -> int:
    """Bytes of the BPTT buffers of one (batch_size, num_steps) window of the model `spec`."""
    cell = {key: spec[key] for key in CELL_KEYS if key in spec}
    model = SimpleNamespace(**spec)
    mode = bptt_memory if budget_bytes is None else choose_bptt_memory(
        bptt_memory, model, batch_size, num_steps, budget_bytes)
    segment_steps = default_segment_steps(num_steps) if mode == "recompute" else None
    return bptt_memory_bytes(batch_size, num_steps, spec["num_hiddens"], spec["vocab_size"], spec["dtype"],
                             segment_steps=segment_steps, **cell)


def training_memory_bytes(spec, config, val_tokens) -> int:
    """Bytes a training run of the model `spec` (RNNLM keyword arguments) with `config` and a
    validation split of `val_tokens` holds at its peak, beyond the interpreter and the text (see
    the module docstring)."""
    slots = len(OPTIMIZERS[config.optimizer].slot_names)
    largest = max(math.prod(shape) for shape in param_shapes(spec).values())
    train = window_bytes(spec, config.batch_size, config.num_steps, config.bptt_memory,
                         config.bptt_memory_budget * 2**20)
    rows = max(1, min(EVAL_ROWS, val_tokens - 1))  # as evaluate.contiguous_batches cuts the split
    evaluation = 2 * window_bytes(spec, rows, max(1, min(EVAL_CHUNK_STEPS, (val_tokens - 1) // rows)))
    if getattr(config, "records", None):  # the previous states ρ_t ⊙ state_{t-1} and ρ (workspace.set_resets)
        S = 2 if spec.get("cell") == "lstm" else 1
        train += np.dtype(spec["dtype"]).itemsize * config.num_steps * config.batch_size * (
            spec.get("num_layers", 1) * S * spec["num_hiddens"] + 1)
    return (4 + slots) * param_bytes(spec) + 8 * largest + train + evaluation


def check_training_memory(spec, config, val_tokens, held=0) -> None:
    """Refuse (CharrnnError) a run whose training_memory_bytes, less the `held` bytes already
    allocated (a resumed checkpoint's), exceed the memory available."""
    what = "resuming this run" if held else "this run"
    check_memory(training_memory_bytes(spec, config, val_tokens) - held, what, advice=MEMORY_ADVICE)


def _read_int(path):
    try:
        text = Path(path).read_text().split()[0]
    except (OSError, IndexError):
        return None
    return int(text) if text.isdigit() else None


def _meminfo_available():
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room():
    """Bytes left under this process's cgroup memory limit (v2 or v1), or None if unlimited/unknown."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:
        _, controllers, group = line.split(":", 2)
        if controllers == "":  # v2
            files = [("/sys/fs/cgroup" + group, "memory.max", "memory.current"),
                     ("/sys/fs/cgroup", "memory.max", "memory.current")]
        elif "memory" in controllers.split(","):  # v1
            files = [("/sys/fs/cgroup/memory" + group, "memory.limit_in_bytes", "memory.usage_in_bytes"),
                     ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes")]
        else:
            continue
        for directory, limit_file, usage_file in files:
            limit, usage = _read_int(os.path.join(directory, limit_file)), _read_int(os.path.join(directory, usage_file))
            if limit is not None and usage is not None:
                if limit < 1 << 60:  # else "max" or v1's "no limit"
                    rooms.append(max(limit - usage, 0))
                break
    return min(rooms) if rooms else None


def available_memory():
    """Bytes this process can still allocate: /proc/meminfo's MemAvailable, lowered by the room
    left under a cgroup limit; None where neither is known (not Linux)."""
    known = [n for n in (_meminfo_available(), _cgroup_room()) if n is not None]
    return min(known) if known else None


def format_bytes(n) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} bytes"


def check_memory(needed, what, advice="try smaller sizes") -> None:
    """Refuse (CharrnnError) when `needed` bytes exceed the memory available now."""
    available = available_memory()
    if available is not None and needed > available:
        raise CharrnnError(f"{what} needs about {format_bytes(needed)} of memory and "
                           f"{format_bytes(available)} is available; {advice}")
