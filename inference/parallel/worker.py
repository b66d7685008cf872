"""`RankWorker`: one rank of a tensor-parallel group, whoever started its process.

Every rank loads the model, wraps it with `deepspeed.init_inference` (AutoTP shards it across
the group) and builds its `ModelRunner` and KV pool. Rank 0 lives with the scheduler: for each
step it broadcasts the `StepInput` to ranks 1..N-1 (a torch.distributed broadcast inside the
group, cheaper than an RPC per step) and all ranks run the forward in lockstep. Ranks 1..N-1
sit in `serve_forever`. The engine starts them as processes (`multiproc.py`); the Serve
replica starts them as Ray actors. Neither matters here.

An idle group stays alive: the peers wait for the next step inside a broadcast, which times out
after `EngineConfig.collective_timeout_s` (120 s), so rank 0 broadcasts a
keep-alive header when it has sent nothing for a quarter of that (`keepalive_if_idle`, called by
the engine loop while it waits for work).
"""

from __future__ import annotations

import logging
import os
import pickle
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from inference.engine.step_input import StepInput
from inference.model.dtypes import DtypeChoice, dtype_choice, torch_dtype
from inference.schema.config.engine import DEFAULT_CPU_KV_TOKENS, EngineConfig

if TYPE_CHECKING:
    from inference.model.model_runner import ModelRunner

log = logging.getLogger(__name__)
# DeepSpeed's CPU all-reduce buffers: <prefix><uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank> (its shm.cpp)
SHM_DIR = Path("/dev/shm")
DEEPSPEED_SHM_PREFIX = "deepspeed_allreduce_buffer_"

_STOP = 0
_KEEPALIVE = -1
ALLOW_CPU_FOR_CUDA_ENV = "SLOSERVE_CUDA_ON_CPU"  # "1": a 'cuda' rank where torch sees no GPU runs on the CPU


class DeviceUnavailableError(RuntimeError):
    """A variant asks for a device this process's torch cannot use."""


def distributed_env(rank: int, tp_size: int, device: torch.device, master_addr: str, master_port: int) -> dict[str, str]:
    """The environment `deepspeed.init_distributed` and `init_inference` read for this rank.

    LOCAL_RANK is the index of this rank's own GPU as this process sees it (DeepSpeed calls
    `set_device(LOCAL_RANK)`): under Ray each rank sees only its bundle's GPU, cuda:0, whatever its
    rank. On CPU it is the rank: with LOCAL_SIZE it names the rank's shared-memory all-reduce
    buffer (without LOCAL_SIZE the first CPU all-reduce segfaults)."""
    local_rank = (device.index or 0) if device.type == "cuda" else rank
    return {"RANK": str(rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(tp_size),
            "LOCAL_SIZE": str(tp_size), "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port)}


@dataclass(slots=True)
class RendezvousInfo:
    """Where the ranks of one group meet."""

    master_addr: str
    master_port: int


@dataclass(slots=True)
class ModelInfo:
    """What rank 0 learns at load time that the engine needs."""

    max_model_len: int
    vocab_size: int
    eos_token_ids: list[int]
    dtype: str
    dtype_choice: DtypeChoice  # why this dtype (`dtype: auto` measures on CPU)
    num_params: int
    num_kv_blocks: int  # the KV pool's blocks (every rank's pool holds this many)


class RankWorker:
    def __init__(self, config: EngineConfig, rank: int, rendezvous: RendezvousInfo | None) -> None:
        if config.tp_size > 1 and rendezvous is None:
            raise ValueError("tp_size > 1 needs a rendezvous address")
        self.config = config
        self.rank = rank
        self.rendezvous = rendezvous
        self.runner: ModelRunner | None = None
        self.tokenizer: Any = None
        self.device = select_device(config.device, rank)
        self.last_broadcast_s = time.monotonic()

    def _init_distributed(self) -> None:
        import deepspeed

        assert self.rendezvous is not None
        n = self.config.tp_size
        # LOCAL_SIZE must be set before init: without it DeepSpeed's CPU shared-memory all-reduce
        # is not initialised and the first all-reduce segfaults.
        os.environ.update(distributed_env(self.rank, n, self.device, self.rendezvous.master_addr,
                                          self.rendezvous.master_port))
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(seconds=self.config.collective_timeout_s))
        if self.device.type == "cpu":
            self._unlink_shm_buffer()

    def _unlink_shm_buffer(self) -> None:
        """Remove this rank's name for DeepSpeed's CPU all-reduce buffer once every rank has mapped
        every buffer. DeepSpeed never unlinks it: each CPU tensor-parallel group left tp_size
        buffers of 64 MiB in /dev/shm (RAM) after it exited, and a test machine had gathered 17 GiB
        of them. The mappings stay valid; the memory goes when the group's processes exit."""
        import torch.distributed as dist

        assert self.rendezvous is not None
        dist.barrier()  # every rank's init has opened every rank's buffer
        name = f"{DEEPSPEED_SHM_PREFIX}{os.getuid()}_{self.rendezvous.master_addr}_{self.rendezvous.master_port}_{self.rank}"
        (SHM_DIR / name).unlink(missing_ok=True)

    def load(self) -> ModelInfo:
        import deepspeed

        from inference.model.decoder_layer import attach_exact_packs
        from inference.model.kernels import q4_packing_enabled
        from inference.model.model_loader import checkpoint_dtype, load_model, resolve_model_dir
        from inference.model.model_runner import ModelRunner
        from inference.model.quant.load_time import apply_load_time_quantization, recipe_quantization

        cfg = self.config
        if self.device.type == "cpu":
            torch.set_num_threads(cfg.num_threads or max(1, (os.cpu_count() or 1) // cfg.tp_size))
        if cfg.tp_size > 1:
            self._init_distributed()
        choice = dtype_choice(cfg.dtype, self.device)
        dtype = torch_dtype(choice.dtype)
        location = resolve_model_dir(cfg.model)
        # load-time quantization: asked for in the config, or by a variant directory's recipe (sloserve_variant.json)
        method = cfg.quantization if cfg.quantization != "none" else recipe_quantization(location)
        # A bf16 model on CPU from an fp32 checkpoint (the packaged GGUF's dequantized weights): loaded
        # as fp32 so the exactly-4/8-bit linears are packed before DeepSpeed's cast to bf16 rounds them;
        # decode steps of a few rows then read the packing (docs/engine-step.md).
        pack_first = (self.device.type == "cpu" and dtype == torch.bfloat16 and cfg.tp_size == 1 and method == "none"
                      and q4_packing_enabled() and checkpoint_dtype(location) == "float32")
        loaded = load_model(cfg.model, dtype=torch.float32 if pack_first else dtype, device=str(self.device),
                            location=location)
        model: Any = loaded.model
        if pack_first:
            log.info("packed %d exactly-4/8-bit linears for bf16 decode", attach_exact_packs(model))
        engine = deepspeed.init_inference(
            model,
            tensor_parallel={"tp_size": cfg.tp_size},
            dtype=dtype,
            # AutoTP only: kernel injection replaces the decoder layers the model runner drives
            replace_with_kernel_inject=False,
        )
        model = engine.module
        if method != "none":
            model = apply_load_time_quantization(model, method, loaded.tokenizer, Path(location))
        model_limit = int(getattr(model.config, "max_position_embeddings", 2048))
        max_model_len = min(cfg.max_model_len or model_limit, model_limit)
        runner = ModelRunner(model, cfg.block_size, max_model_len, attention=cfg.attention)
        num_blocks = self._kv_blocks(runner)
        runner.allocate_kv_cache(num_blocks, compile=cfg.compile, cuda_graphs=cfg.cuda_graphs,
                                 max_num_seqs=cfg.max_num_seqs, tp_size=cfg.tp_size)
        self.runner = runner
        self.tokenizer = loaded.tokenizer
        if cfg.chat_template is not None:  # the config's template replaces the model's own
            self.tokenizer.chat_template = cfg.chat_template
        eos = _eos_token_ids(model, loaded.tokenizer)
        return ModelInfo(
            max_model_len=max_model_len,
            vocab_size=int(model.config.vocab_size),
            eos_token_ids=eos,
            dtype=choice.dtype,
            dtype_choice=choice,
            num_params=sum(p.numel() for p in model.parameters()),
            num_kv_blocks=num_blocks,
        )

    def _kv_blocks(self, runner: ModelRunner) -> int:
        """The pool's blocks: from kv_cache_tokens, else on CUDA what gpu_memory_utilization leaves
        (the smallest of the group's ranks, so every rank's pool holds the same blocks), else the CPU default."""
        cfg = self.config
        if cfg.kv_cache_tokens is not None:
            return cfg.kv_cache_tokens // cfg.block_size
        if self.device.type != "cuda":
            return DEFAULT_CPU_KV_TOKENS // cfg.block_size
        blocks = runner.kv_blocks_that_fit(cfg.gpu_memory_utilization, cfg.max_num_batched_tokens, cfg.max_num_seqs)
        if cfg.tp_size > 1:
            import torch.distributed as dist

            smallest = torch.tensor([blocks], dtype=torch.int64, device=self.device)
            dist.all_reduce(smallest, op=dist.ReduceOp.MIN)
            blocks = int(smallest.item())
        return blocks

    def execute(self, step: StepInput) -> torch.Tensor:
        """Rank 0: hand the step to the other ranks, then run it here too."""
        assert self.runner is not None, "load() first"
        if self.config.tp_size > 1:
            self._broadcast(pickle.dumps(step, protocol=pickle.HIGHEST_PROTOCOL))
        return self.runner.execute(step)

    def keepalive_if_idle(self) -> None:
        """Rank 0, between steps: a keep-alive header to the peers if nothing went out for a
        quarter of the collective timeout (their wait for the next step would otherwise time out)."""
        if self.config.tp_size > 1 and time.monotonic() - self.last_broadcast_s >= self.config.collective_timeout_s / 4:
            self._send_header(_KEEPALIVE)

    def serve_forever(self) -> None:
        """Ranks 1..N-1: run every step rank 0 broadcasts, until it says stop."""
        assert self.rank > 0 and self.runner is not None
        while True:
            payload = self._receive()
            if payload is None:
                break
            if payload:
                self.runner.execute(pickle.loads(payload))
        self.close()

    def stop_peers(self) -> None:
        if self.config.tp_size > 1 and self.rank == 0 and self.runner is not None:
            self._broadcast(b"")

    def close(self) -> None:
        """Leave the process group, so this process can later join another (tests run several)."""
        import torch.distributed as dist

        if self.config.tp_size > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def _send_header(self, value: int) -> None:
        import torch.distributed as dist

        dist.broadcast(torch.tensor([value], dtype=torch.int64, device=self.device), src=0)
        self.last_broadcast_s = time.monotonic()

    def _broadcast(self, payload: bytes) -> None:
        import torch.distributed as dist

        self._send_header(len(payload))
        if payload:
            data = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(self.device)
            dist.broadcast(data, src=0)

    def _receive(self) -> bytes | None:
        import torch.distributed as dist

        header = torch.zeros(1, dtype=torch.int64, device=self.device)
        dist.broadcast(header, src=0)
        size = int(header.item())
        if size == _STOP:
            return None
        if size == _KEEPALIVE:
            return b""
        data = torch.empty(size, dtype=torch.uint8, device=self.device)
        dist.broadcast(data, src=0)
        return data.cpu().numpy().tobytes()


def select_device(requested: str, rank: int) -> torch.device:
    """The device of rank `rank`: the GPU its launcher assigned, else the CPU.

    Under Ray each rank holds one GPU of its bundle and Ray sets CUDA_VISIBLE_DEVICES to it alone,
    so torch sees one device: cuda:0. Ranks started as local processes see every GPU: cuda:rank.
    'cuda' where torch sees no CUDA device (a CPU build, or no GPU visible) is an error naming the
    torch build: never a silent CPU run. Only with SLOSERVE_CUDA_ON_CPU=1 (tests whose GPUs Ray
    merely declares) does such a rank run on the CPU, saying so in the log.
    """
    if requested != "cuda":
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        why = (f"device 'cuda' asked, but torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no "
               f"CUDA device (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
        if os.environ.get(ALLOW_CPU_FOR_CUDA_ENV) != "1":
            raise DeviceUnavailableError(
                f"{why}: install a CUDA build of torch (make gpu-check does) or set the variant's device to 'cpu'")
        log.warning("rank %d: %s; running on the CPU (%s=1)", rank, why, ALLOW_CPU_FOR_CUDA_ENV)
        return torch.device("cpu")
    return torch.device("cuda", rank % count)


def _eos_token_ids(model: torch.nn.Module, tokenizer: object) -> list[int]:
    ids: set[int] = set()
    gen = getattr(model, "generation_config", None)
    for source in (getattr(gen, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list):
            ids.update(int(i) for i in source)
    return sorted(ids)
