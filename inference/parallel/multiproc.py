"""Ranks 1..N-1 of a tensor-parallel group as local processes, for the engine used without Ray.

The Serve replica uses Ray actors instead (deployments/replica/tp_group.py); both run the same
`RankWorker.serve_forever`.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
from typing import Protocol

from inference.parallel.worker import RankWorker, RendezvousInfo
from inference.schema.config.engine import EngineConfig


class PeerRanks(Protocol):
    """Whatever runs ranks 1..N-1: started before rank 0 loads, watched while it serves."""

    def start(self) -> None: ...

    def dead_ranks(self) -> list[int]: ...

    def stop(self) -> None: ...


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _peer_main(config_json: str, rank: int, rendezvous: RendezvousInfo) -> None:
    worker = RankWorker(EngineConfig.model_validate_json(config_json), rank, rendezvous)
    worker.load()
    worker.serve_forever()


class MultiprocPeers:
    def __init__(self, config: EngineConfig, rendezvous: RendezvousInfo) -> None:
        self.config = config
        self.rendezvous = rendezvous
        self.processes: list[mp.process.BaseProcess] = []

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        for rank in range(1, self.config.tp_size):
            process = ctx.Process(
                target=_peer_main,
                args=(self.config.model_dump_json(), rank, self.rendezvous),
                name=f"sloserve-rank{rank}",
                daemon=True,
            )
            process.start()
            self.processes.append(process)

    def dead_ranks(self) -> list[int]:
        return [rank for rank, p in enumerate(self.processes, start=1) if not p.is_alive()]

    def stop(self) -> None:
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        self.processes.clear()
