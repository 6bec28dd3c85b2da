"""Placing K sub-models on devices: minimise the slowest device's predicted latency under memory limits.

A device may host several parts; they run one after another, so a device's latency is the sum of its
parts' latencies on it (``lat[i][d]``, ms) and its memory the sum of theirs (``mem[i][d]``, bytes) which
must fit its limit. The objective is the makespan max_d load(d) (the fused answer waits for the slowest).

* ``exact`` (K <= ``EXACT_MAX_PARTS``): depth-first branch and bound over every part -> device map, parts
  in decreasing order of their largest latency, a branch cut as soon as its makespan reaches the best found
  (seeded by the greedy plan), and empty identical devices (same latencies and memory) tried once. Optimal.
* ``greedy`` (beyond, or on request): LPT, longest processing time first (parts in decreasing order of their
  smallest latency, each to the memory-feasible device where it would finish earliest). On identical devices
  without memory limits LPT is within 4/3 - 1/(3M) of optimal (Graham 1969); on uniform devices (speeds
  differ by a factor) within 2M/(M+1) (Gonzalez, Ibarra and Sahni 1977). With memory limits it can miss a
  feasible plan (bin packing): it then says so.

Latency and memory of a part on a device come from ``compress.targets`` (``part_costs``): the target's
latency model (measured LUT when stored, else roofline; ``source`` says which) and the weights' bytes at the
precision plus a peak-activation estimate.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError

EXACT_MAX_PARTS = 8


@dataclass(frozen=True)
class Device:
    name: str
    target: str  # a profile in targets/profiles
    memory_bytes: int


@dataclass
class Plan:
    method: str  # exact | greedy
    device_of: list[int]  # part index -> device index
    device_ms: list[float]  # predicted latency per device (sum of its parts)
    device_bytes: list[float]
    makespan_ms: float
    devices: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # latency model source per device (lut, roofline, ...)

    def to_dict(self) -> dict:
        return {"method": self.method, "makespan_ms": round(self.makespan_ms, 4),
                "parts": [{"part": i, "device": self.devices[d] if self.devices else d}
                          for i, d in enumerate(self.device_of)],
                "devices": [{"device": self.devices[d] if self.devices else d, "predicted_ms": round(ms, 4),
                             "bytes": int(b), **({"latency_source": self.sources[d]} if self.sources else {})}
                            for d, (ms, b) in enumerate(zip(self.device_ms, self.device_bytes))]}


def make_device(name: str, target: str, memory_gb: float | None = None) -> Device:
    """A device running ``target``'s profile; memory from the profile's ``memory_gb`` unless given."""
    from ..targets.devices import load_profile

    gb = memory_gb if memory_gb is not None else load_profile(target).get("memory_gb")
    if gb is None:
        raise UserError(f"target {target!r} gives no memory_gb", f"pass memory_gb for device {name!r}")
    return Device(name, target, int(float(gb) * 2**30))


def model_bytes(cfg, params: int, precision: str = "fp32") -> float:
    """Weights at ``precision`` plus the largest live activations of one block at batch 1 (fp32), an estimate."""
    from ..targets.latency_models import PRECISION_BYTES, canonical_precision

    wb = PRECISION_BYTES[canonical_precision(precision)][0]
    T, D = cfg.num_tokens, cfg.embed_dim
    act = max([3 * T * D + b.num_heads * T * T + T * b.mlp_dim for b in cfg.blocks] or [T * D])
    return params * wb + 4.0 * act


def part_costs(cfgs: list, params: list[int], devices: list[Device], precision: str = "fp32"):
    """(lat[i][d] ms, mem[i][d] bytes, latency source per device) of each part (ViTConfig) on each device."""
    from ..targets.latency_models import load_latency_model

    models = {d.target: load_latency_model(d.target) for d in devices}
    lat = [[models[d.target].model_ms(c, precision) for d in devices] for c in cfgs]
    mem = [[model_bytes(c, p, precision) for _ in devices] for c, p in zip(cfgs, params)]
    return lat, mem, [models[d.target].source_for(precision) for d in devices]


def _check(lat, mem, cap) -> tuple[int, int]:
    K, M = len(lat), len(cap)
    if K == 0 or M == 0:
        raise UserError("nothing to place: no parts or no devices", "give at least one of each")
    if any(len(r) != M for r in lat) or len(mem) != K or any(len(r) != M for r in mem):
        raise UserError("latency and memory tables must be parts x devices", f"{K} parts, {M} devices")
    return K, M


def _infeasible(K, M, mem, cap) -> UserError:
    worst = max(range(K), key=lambda i: min(mem[i]))
    return UserError(f"no placement of {K} parts on {M} devices fits their memory (part {worst} needs "
                     f"{min(mem[worst]) / 2**20:.1f} MiB at least, the largest device has {max(cap) / 2**20:.1f} MiB)",
                     "add devices, use devices with more memory, or split into smaller parts")


def greedy(lat, mem, cap) -> tuple[list[int], float] | None:
    """LPT (module docstring): the map part -> device and its makespan, or None when it finds no fit."""
    K, M = _check(lat, mem, cap)
    load, used, out = [0.0] * M, [0.0] * M, [0] * K
    for i in sorted(range(K), key=lambda i: (-min(lat[i]), i)):
        fits = [d for d in range(M) if used[d] + mem[i][d] <= cap[d]]
        if not fits:
            return None
        d = min(fits, key=lambda d: (load[d] + lat[i][d], d))
        out[i], load[d], used[d] = d, load[d] + lat[i][d], used[d] + mem[i][d]
    return out, max(load)


def exact(lat, mem, cap) -> tuple[list[int], float] | None:
    """Branch and bound (module docstring): an optimal map and its makespan, or None when nothing fits."""
    K, M = _check(lat, mem, cap)
    order = sorted(range(K), key=lambda i: (-max(lat[i]), i))
    kind = [(tuple(lat[i][d] for i in range(K)), tuple(mem[i][d] for i in range(K)), cap[d]) for d in range(M)]
    g = greedy(lat, mem, cap)
    best = [g[1] * (1 + 1e-12) + 1e-12 if g else float("inf"), list(g[0]) if g else None]
    load, used, cur = [0.0] * M, [0.0] * M, [0] * K

    def dfs(k: int, span: float) -> None:
        if k == K:
            if span < best[0] or best[1] is None:
                best[0], best[1] = span, list(cur)
            return
        i, seen = order[k], set()
        for d in sorted(range(M), key=lambda d: (load[d] + lat[i][d], d)):
            if load[d] == 0.0 and used[d] == 0.0:
                if kind[d] in seen:  # an empty device identical to one tried already
                    continue
                seen.add(kind[d])
            new = max(span, load[d] + lat[i][d])
            if new >= best[0] or used[d] + mem[i][d] > cap[d]:
                continue
            cur[i], load[d], used[d] = d, load[d] + lat[i][d], used[d] + mem[i][d]
            dfs(k + 1, new)
            load[d], used[d] = load[d] - lat[i][d], used[d] - mem[i][d]

    dfs(0, 0.0)
    if best[1] is None:
        return None
    span = max(sum(lat[i][d] for i in range(K) if best[1][i] == d) for d in range(M))
    return best[1], span


def assign(lat, mem, cap, method: str = "auto", devices: list[str] | None = None,
           sources: list[str] | None = None) -> Plan:
    """The plan: exact for K <= EXACT_MAX_PARTS (``auto``), greedy beyond; UserError when nothing fits."""
    K, M = _check(lat, mem, cap)
    if method == "auto":
        method = "exact" if K <= EXACT_MAX_PARTS else "greedy"
    if method not in ("exact", "greedy"):
        raise UserError(f"unknown assignment method {method!r}", "use auto, exact or greedy")
    got = (exact if method == "exact" else greedy)(lat, mem, cap)
    if got is None:
        if method == "greedy" and exact_possible(K, M) and exact(lat, mem, cap) is not None:
            raise UserError(f"greedy placement found no fit of {K} parts on {M} devices (one exists)",
                            "use method 'exact'")
        raise _infeasible(K, M, mem, cap)
    out, span = got
    dev_ms = [sum(lat[i][d] for i in range(K) if out[i] == d) for d in range(M)]
    dev_b = [sum(mem[i][d] for i in range(K) if out[i] == d) for d in range(M)]
    return Plan(method, out, dev_ms, dev_b, span, list(devices or []), list(sources or []))


def exact_possible(K: int, M: int) -> bool:
    return K <= EXACT_MAX_PARTS and M ** K <= 8 ** 8


def plan_parts(cfgs: list, params: list[int], devices: list[Device], precision: str = "fp32",
               method: str = "auto") -> Plan:
    """Predict each part's latency and memory on each device (compress.targets) and place them."""
    lat, mem, src = part_costs(cfgs, params, devices, precision)
    return assign(lat, mem, [d.memory_bytes for d in devices], method, [d.name for d in devices], src)
