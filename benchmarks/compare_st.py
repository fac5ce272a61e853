"""The comparison users make: one training step of ours vs sentence-transformers, same sentences.

    python benchmarks/compare_st.py [--model minilm] [--batch 32] [--seq 64] [--repeats 7]
        [--sides 'jax:*,st:*,torch:*'] [--sentences 4096] [--no_write] [--markdown BENCHMARKS.md]

Sides (``--sides`` takes a comma list of these names or shell patterns, e.g. ``jax:simcse:*``):

* ``jax:<method>:<layout>``: our JAX step (``softmcl_jax.train.setup_step``, one ``jax.jit``,
  state donated, metrics to the host) of each preset (simcse, softcse, softmcl, retrofit, lcl),
  with the batch padded to max_len (``unpacked``), packed (``packed``: ``data.packing``, several
  sentences per row, the rows chosen from the length distribution) or padded to the smallest of
  four buckets (``bucketed``: ``data.bucket_lengths`` = max_len x 1/4, 2/4, 3/4, 1);
* ``st:mnrl``: sentence-transformers' ``MultipleNegativesRankingLoss`` on (s, s) pairs, SimCSE's
  counterpart (two forwards with dropout on), and ``st:triplet``: its ``BatchAllTripletLoss`` on
  the labelled methods' (made-up) labels; a manual step (forward, loss, backward, clip to norm 1
  as its trainer does by default, ``torch.optim.AdamW``) on batches its own tokenizer padded to
  the batch's longest sentence;
* ``torch:<method>``: our PyTorch baseline (``baselines/torch_train.TorchTrainer``) with dynamic
  padding (each batch's token arrays cut to its longest sentence).

Every side runs the same sentences in the same batches: a seeded sample of ``--sentences`` VADER
sentences written to a CSV (text, valence, label = valence bin of 5, the made-up classes of the
labelled methods), batched by our pipeline's epoch permutation. Batches are tokenized and put on
the device before timing, on every side. Each side runs in its own process (one per side, all
alike); the sides of one method (and the sentence-transformers side that compares with it) are
started together and take their steps in turns, round by round in a rotating order, so drift in
the machine's speed hits them alike. Per side: one warm-up step (JAX: compiling, once per batch
shape among the timed batches), then the median of ``--repeats`` timed steps on new batches.
Writes a section of BENCHMARKS.md through benchmarks/report.py unless ``--no_write``.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
import report  # noqa: E402
from workers import RESULT, emit, peak_rss_mib  # noqa: E402

METHODS = ("simcse", "softcse", "softmcl", "retrofit", "lcl")
LAYOUTS = ("unpacked", "packed", "packed-fixed", "bucketed")
LABELLED = ("retrofit", "lcl")
NUM_LABELS = 5  # made-up classes: valence bins
ST_VERSION = "sentence-transformers"
# Worker -> parent lines on stdout (anything else a library prints there is skipped).
READY, TIME = "READY ", "TIME "  # and workers.RESULT


def all_sides() -> list[str]:
    return ([f"jax:{m}:{lay}" for m in METHODS for lay in LAYOUTS] + ["st:mnrl", "st:triplet"]
            + [f"torch:{m}" for m in METHODS])


def select_sides(patterns: str) -> list[str]:
    known = all_sides()
    chosen: list[str] = []
    for pat in (p.strip() for p in patterns.split(",")):
        if not pat:
            continue
        hits = [s for s in known if fnmatch.fnmatchcase(s, pat)]
        if not hits:
            raise ValueError(f"--sides: {pat!r} matches none of {known}")
        chosen += [s for s in hits if s not in chosen]
    return [s for s in known if s in chosen]  # canonical order


def method_of(side: str) -> str | None:
    kind, _, rest = side.partition(":")
    if kind in ("jax", "torch"):
        return rest.split(":")[0]
    return None


def groups(sides: list[str]) -> list[tuple[str, list[str]]]:
    """Sides that take turns: each method's, with the sentence-transformers side it is compared
    with (MNRL with simcse, the triplet loss with the first labelled method present)."""
    methods = [m for m in METHODS if any(method_of(s) == m for s in sides)]
    out = {m: [s for s in sides if method_of(s) == m] for m in methods}
    if "st:mnrl" in sides:
        out.setdefault("simcse", []).insert(0, "st:mnrl")
    if "st:triplet" in sides:
        home = next((m for m in LABELLED if m in out), "retrofit")
        out.setdefault(home, []).insert(0, "st:triplet")
    return [(m, out[m]) for m in METHODS if m in out]


def buckets(seq: int) -> tuple[int, ...]:
    return tuple(sorted({max(1, seq * i // 4) for i in range(1, 5)}))


def model_path(name: str) -> str:
    from softmcl_jax.models.hf import resolve_name

    return str(resolve_name(name))


def model_label(name: str) -> str:
    return "MiniLM-L6 (all-MiniLM-L6-v2)" if name == "minilm" else name


# ----------------------------------------------------------------------------------- data


def write_sentences_csv(path: str, sentences: list[Any]) -> None:
    """text, valence (0..1), label (valence bin of NUM_LABELS): what every config here reads."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "valence", "label"])
        for s in sentences:
            w.writerow([s.text, f"{valence_of(s):.6f}", label_of(s)])


def valence_of(s: Any) -> float:
    return 0.5 if s.valence is None else float(s.valence)


def label_of(s: Any) -> int:
    """The made-up class of the labelled methods: the valence bin (of NUM_LABELS)."""
    return min(int(valence_of(s) * NUM_LABELS), NUM_LABELS - 1)


def sample_vader(n: int, seed: int = 0) -> list[Any]:
    """A seeded sample of n VADER sentences from all four sets (their length mix)."""
    from softmcl_jax.data import load_vader_sentences

    sentences = load_vader_sentences()
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(sentences), size=min(n, len(sentences)), replace=False)
    return [sentences[i] for i in pick]


def config_for(method: str, *, model: str, batch: int, seq: int, csv_path: str,
               layout: str = "unpacked") -> Any:
    """configs/<method>.py on the CSV (valence, made-up labels) in one of the layouts."""
    import runpy

    config = runpy.run_path(os.path.join(ROOT, "configs", f"{method}.py"))["get_config"]()
    config.model.name_or_path = model
    config.batch_size, config.model.max_len = batch, seq
    config.total_steps = 1000
    config.probe.enabled = False
    config.export.enabled = False
    d = config.data
    d.source, d.path, d.text_column = "csv", csv_path, "text"
    d.valence_column, d.scale_low, d.scale_high = "valence", 0.0, 1.0
    d.max_examples, d.prefetch, d.single_label_only = 0, 0, False
    if method in LABELLED:
        d.label_column, d.num_labels = "label", NUM_LABELS
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}, not one of {LAYOUTS}")
    d.packing = layout.startswith("packed")
    if layout == "packed-fixed":  # one static row count, the sampled worst case
        d.packing_quantiles = (1.0,)
    elif layout == "bucketed":
        d.bucket_lengths = buckets(seq)
    return config


def real_tokens(batch: dict[str, np.ndarray]) -> tuple[int, int]:
    """(real tokens, token slots) of the encoder's input in a batch of any layout."""
    if "segment_ids" in batch:
        return int((batch["segment_ids"] > 0).sum()), int(batch["segment_ids"].size)
    m = batch["attention_mask"]
    return int(m.astype(bool).sum()), int(m.size)


def trim_to_longest(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Dynamic padding: token arrays cut to the batch's longest sentence (padding only)."""
    from softmcl_jax.data.pipeline import TOKEN_KEYS

    full = batch["input_ids"].shape[1]
    longest = max(int(batch["attention_mask"].astype(bool).sum(axis=1).max()), 1)
    return {k: v[:, :longest] if k in TOKEN_KEYS and v.ndim >= 2 and v.shape[1] == full else v
            for k, v in batch.items()}


def prepare(args: argparse.Namespace, sides: list[str], out: str) -> dict[str, Any]:
    """The CSV, each (method, layout)'s batches (npz) and each step's texts and labels."""
    import jax

    from softmcl_jax import loop, sharding

    steps = args.repeats + 1
    n = max(args.sentences, args.batch * steps)
    sentences = sample_vader(n)
    if len(sentences) < args.batch * steps:
        raise ValueError(f"{len(sentences)} sentences make fewer than {steps} batches")
    csv_path = os.path.join(out, "sentences.csv")
    write_sentences_csv(csv_path, sentences)
    need = set()
    for s in sides:
        parts = s.split(":")
        if parts[0] == "jax":
            need.add((parts[1], parts[2]))
        elif parts[0] == "torch":
            need.add((parts[1], "unpacked"))
    if not need:  # the sentence-transformers sides alone: the batches' indices still come from here
        need.add(("simcse", "unpacked"))
    mesh = sharding.make_mesh(1, 1, jax.devices()[:1])
    tokenizer = None
    indices = None
    info: dict[str, Any] = {"csv": csv_path, "fractions": {}, "rows": {}}
    for method, layout in sorted(need):
        config = config_for(method, model=args.model, batch=args.batch, seq=args.seq,
                            csv_path=csv_path, layout=layout)
        if tokenizer is None:
            _, tokenizer, _ = loop.setup_model(config)
        pipeline = loop.build_pipeline(config, tokenizer, mesh)
        idx = np.stack([pipeline.global_indices(i)[1] for i in range(steps)])
        if indices is None:
            indices = idx
        elif not np.array_equal(indices, idx):
            raise RuntimeError(f"{method}/{layout}: the pipeline batched other sentences")
        batches = [pipeline.batch(i) for i in range(steps)]
        np.savez(os.path.join(out, f"{method}_{layout}.npz"),
                 **{f"{i}/{k}": v for i, b in enumerate(batches) for k, v in b.items()})
        real = [real_tokens(b) for b in batches[1:]]
        info["fractions"][f"{method}:{layout}"] = sum(r for r, _ in real) / sum(t for _, t in real)
        if layout.startswith("packed"):
            info["rows"][f"{method}:{layout}"] = [int(b["packed_input_ids"].shape[0])
                                                  for b in batches[1:]]
        if layout == "unpacked":
            dyn = [real_tokens(trim_to_longest(b)) for b in batches[1:]]
            info["fractions"][f"{method}:dynamic"] = (sum(r for r, _ in dyn)
                                                      / sum(t for _, t in dyn))
    assert indices is not None
    with open(os.path.join(out, "steps.json"), "w") as f:
        json.dump({"texts": [[sentences[i].text for i in row] for row in indices],
                   "labels": [[label_of(sentences[i]) for i in row] for row in indices]}, f)
    return info


def load_batches(prep: str, method: str, layout: str) -> list[dict[str, np.ndarray]]:
    data = np.load(os.path.join(prep, f"{method}_{layout}.npz"))
    out: dict[int, dict[str, np.ndarray]] = {}
    for key in data.files:
        i, k = key.split("/", 1)
        out.setdefault(int(i), {})[k] = data[key]
    return [out[i] for i in sorted(out)]


# -------------------------------------------------------------------------------- workers


class JaxStep:
    """Our trainer's step on one config: ``setup_step``'s jitted step, state carried and donated,
    metrics to the host (what the loop does at a logging step; it waits for the step).

    ``compile(batch)`` compiles ahead of time for the batch's shapes (once per shape; the jit
    call then reuses the executable) and keeps XLA's memory analysis of it.
    """

    def __init__(self, config: Any):
        import jax

        from softmcl_jax import config_check, loop, sharding, train

        self.plan = config_check.validate(config)
        self.config = config
        self.pretrained, self.tokenizer, model = loop.setup_model(config, self.plan)
        self.mesh = sharding.make_mesh(1, 1, jax.devices()[:1])
        setup = train.setup_step(model, config, self.mesh, self.plan)
        self.step_fn = setup.step_fn
        self.state = setup.init()
        self._batch_sharding = sharding.batch_sharding(self.mesh)
        self._host_scalars = train.host_scalars
        self.memory: dict[tuple, Any] = {}  # shapes -> CompiledMemoryStats
        self.compile_s = 0.0

    def put(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """The plan's arrays of a numpy batch, on the device (as the prefetching pipeline has
        them before the step)."""
        import jax

        return jax.device_put({k: batch[k] for k in self.plan.batch_keys}, self._batch_sharding)

    @staticmethod
    def shapes(batch: dict[str, Any]) -> tuple:
        return tuple(sorted((k, tuple(v.shape)) for k, v in batch.items()))

    def compile(self, batch: dict[str, Any]) -> Any:
        key = self.shapes(batch)
        if key not in self.memory:
            t0 = time.perf_counter()
            compiled = self.step_fn.lower(self.state, batch).compile()
            self.compile_s += time.perf_counter() - t0
            self.memory[key] = compiled.memory_analysis()
        return self.memory[key]

    def __call__(self, batch: dict[str, Any]) -> None:
        self.state, metrics = self.step_fn(self.state, batch)
        self._host_scalars(metrics)


def memory_mib(stats: Any) -> float:
    """XLA's compiled peak estimate: arguments (state, batch, constants) + temporaries."""
    if stats is None:
        return float("nan")
    return (stats.argument_size_in_bytes + stats.temp_size_in_bytes) / 2**20


class Worker:
    """One side: ``setup()`` (load, warm up) -> ready facts; ``step(i)`` runs timed batch i."""

    def setup(self) -> dict[str, Any]:
        raise NotImplementedError

    def step(self, i: int) -> None:
        raise NotImplementedError


class JaxWorker(Worker):
    def __init__(self, method: str, layout: str, args: argparse.Namespace):
        self.method, self.layout, self.args = method, layout, args

    def setup(self) -> dict[str, Any]:
        import jax

        a = self.args
        config = config_for(self.method, model=a.model, batch=a.batch, seq=a.seq,
                            csv_path=os.path.join(a.prep, "sentences.csv"), layout=self.layout)
        self.run = JaxStep(config)
        self.batches = [self.run.put(b) for b in load_batches(a.prep, self.method, self.layout)]
        t0 = time.perf_counter()
        self.run.compile(self.batches[0])
        self.run(self.batches[0])
        first = time.perf_counter() - t0
        # Every other batch shape among the timed batches (a packing overflow, another bucket)
        # is compiled and run once now, so that no timed step compiles.
        seen = {JaxStep.shapes(self.batches[0])}
        for b in self.batches[1:]:
            if JaxStep.shapes(b) not in seen:
                seen.add(JaxStep.shapes(b))
                self.run.compile(b)
                self.run(b)
        dev = jax.devices()[0]
        return dict(first=first, compile_s=self.run.compile_s, programs=len(seen),
                    platform=dev.platform, device_kind=dev.device_kind,
                    xla_mib=memory_mib(self.run.compile(self.batches[0])))

    def step(self, i: int) -> None:
        self.run(self.batches[i])


def _torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class TorchWorker(Worker):
    def __init__(self, method: str, args: argparse.Namespace):
        self.method, self.args = method, args

    def setup(self) -> dict[str, Any]:
        import torch
        import transformers

        from baselines.torch_train import TorchTrainer

        transformers.utils.logging.set_verbosity_error()
        a = self.args
        self.device = _torch_device()
        config = config_for(self.method, model=a.model, batch=a.batch, seq=a.seq,
                            csv_path=os.path.join(a.prep, "sentences.csv"))
        self.trainer = TorchTrainer(config, model_path(a.model), device=self.device)
        keys = self.trainer.batch_keys
        self.batches = [{k: v for k, v in trim_to_longest(b).items() if k in keys}
                        for b in load_batches(a.prep, self.method, "unpacked")]
        t0 = time.perf_counter()
        self.step(0)
        return dict(first=time.perf_counter() - t0, threads=torch.get_num_threads(),
                    device=self.device)

    def step(self, i: int) -> None:
        self.trainer.step(self.batches[i])  # its float() of the metrics waits for the step


class STWorker(Worker):
    """sentence-transformers' own model, loss and padding; a manual training step."""

    def __init__(self, loss: str, args: argparse.Namespace):
        self.loss_name, self.args = loss, args

    def setup(self) -> dict[str, Any]:
        import torch
        import transformers
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer import losses

        transformers.utils.logging.set_verbosity_error()
        a = self.args
        self.device = _torch_device()
        torch.manual_seed(0)
        self.model = SentenceTransformer(model_path(a.model), device=self.device)
        self.model.max_seq_length = a.seq
        self.model.train()
        if self.loss_name == "mnrl":
            self.loss = losses.MultipleNegativesRankingLoss(self.model)
            self.columns = 2  # (s, s): anchor and positive are two dropout views
        else:
            self.loss = losses.BatchAllTripletLoss(self.model)
            self.columns = 1
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=2e-5, weight_decay=0.01)
        with open(os.path.join(a.prep, "steps.json")) as f:
            steps = json.load(f)
        self.features = []
        self.labels = []
        real = slots = 0
        for i, (texts, labels) in enumerate(zip(steps["texts"], steps["labels"], strict=True)):
            feats = self.model.preprocess(texts)  # padded to the batch's longest, cut at seq
            feats = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                     for k, v in feats.items()}
            self.features.append(feats)
            self.labels.append(torch.tensor(labels, device=self.device))
            if i:
                real += int(feats["attention_mask"].sum())
                slots += int(feats["attention_mask"].numel())
        t0 = time.perf_counter()
        self.step(0)
        return dict(first=time.perf_counter() - t0, threads=torch.get_num_threads(),
                    device=self.device, fraction=real / max(slots, 1))

    def step(self, i: int) -> None:
        import torch

        self.optimizer.zero_grad(set_to_none=True)
        feats = [dict(self.features[i]) for _ in range(self.columns)]  # the loss writes into them
        loss = self.loss(feats, self.labels[i])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        float(loss.detach())  # waits for the step (the JAX side reads its metrics too)


def make_worker(side: str, args: argparse.Namespace) -> Worker:
    parts = side.split(":")
    if parts[0] == "jax":
        return JaxWorker(parts[1], parts[2], args)
    if parts[0] == "torch":
        return TorchWorker(parts[1], args)
    return STWorker(parts[1], args)


def worker_main(args: argparse.Namespace) -> None:
    w = make_worker(args.worker, args)
    ready = w.setup()
    print(READY + json.dumps(ready), flush=True)
    while True:
        line = sys.stdin.readline()
        if not line or line.strip() == "quit":
            break
        i = int(line.split()[1])
        t0 = time.perf_counter()
        w.step(i)
        print(TIME + json.dumps(time.perf_counter() - t0), flush=True)
    emit(dict(peak_rss=peak_rss_mib()))


# ----------------------------------------------------------------------------------- parent


class Proc:
    """A worker process spoken to over stdin/stdout, its stderr kept in a file."""

    def __init__(self, side: str, args: argparse.Namespace, prep: str, env: dict[str, str]):
        self.side = side
        self.err = tempfile.TemporaryFile(mode="w+")
        cmd = [sys.executable, os.path.abspath(__file__), f"--worker={side}", f"--prep={prep}",
               f"--model={args.model}", f"--batch={args.batch}", f"--seq={args.seq}",
               f"--repeats={args.repeats}"]
        self.p = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.err, text=True, bufsize=1)

    def expect(self, prefix: str) -> Any:
        assert self.p.stdout is not None
        while True:
            line = self.p.stdout.readline()
            if not line:
                self.p.wait()
                self.err.seek(0)
                raise RuntimeError(f"worker {self.side} ended (exit {self.p.returncode}) before "
                                   f"{prefix.strip()}:\n{self.err.read()[-4000:]}")
            if line.startswith(prefix):
                return json.loads(line[len(prefix):])

    def send(self, text: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(text + "\n")
        self.p.stdin.flush()

    def close(self) -> Any:
        self.send("quit")
        out = self.expect(RESULT)
        self.p.wait()
        self.err.close()
        return out

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        self.err.close()


def run_group(sides: list[str], args: argparse.Namespace, prep: str,
              env: dict[str, str]) -> dict[str, dict[str, Any]]:
    procs: list[Proc] = []
    res: dict[str, dict[str, Any]] = {}
    try:
        for side in sides:  # one at a time: loading and compiling do not overlap
            proc = Proc(side, args, prep, env)
            procs.append(proc)
            res[side] = dict(proc.expect(READY), times=[])
        for r in range(1, args.repeats + 1):
            k = (r - 1) % len(procs)
            for proc in procs[k:] + procs[:k]:  # a rotating order, round by round
                proc.send(f"step {r}")
                res[proc.side]["times"].append(proc.expect(TIME))
        for proc in procs:
            res[proc.side].update(proc.close())
    finally:
        for proc in procs:
            proc.kill()
    for side in sides:
        r = res[side]
        r["times"] = sorted(r["times"])
        print(f"{side:22s} median {report.median(r['times']):.4f} s, min {r['times'][0]:.4f} s "
              f"(first step {r['first']:.1f} s), peak RSS {r['peak_rss']:.0f} MiB", flush=True)
    return res


SIDE_NAMES = {"jax": "ours (JAX)", "torch": "our PyTorch baseline"}
ST_NAMES = {"mnrl": "MultipleNegativesRankingLoss", "triplet": "BatchAllTripletLoss"}


def describe_side(side: str, args: argparse.Namespace, info: dict[str, Any]) -> tuple[str, str]:
    """(who, padding) of a side for the table."""
    parts = side.split(":")
    if parts[0] == "st":
        return f"sentence-transformers {ST_NAMES[parts[1]]}", "dynamic (batch's longest)"
    if parts[0] == "torch":
        return SIDE_NAMES["torch"], "dynamic (batch's longest)"
    layout = parts[2]
    if layout == "unpacked":
        pad = f"to max_len {args.seq}"
    elif layout.startswith("packed"):
        rows = info["rows"][f"{parts[1]}:{layout}"]
        counts = "/".join(map(str, sorted(set(rows))))
        pad = (f"packed, {counts} rows of {args.seq}" if len(set(rows)) == 1 else
               f"packed, {counts} rows of {args.seq} (mean {np.mean(rows):.1f})")
    else:
        pad = f"buckets {'/'.join(map(str, buckets(args.seq)))}"
    return SIDE_NAMES["jax"], pad


def fraction_of(side: str, info: dict[str, Any], res: dict[str, Any]) -> float:
    parts = side.split(":")
    if parts[0] == "st":
        return res["fraction"]
    if parts[0] == "torch":
        return info["fractions"][f"{parts[1]}:dynamic"]
    return info["fractions"][f"{parts[1]}:{parts[2]}"]


def table(args: argparse.Namespace, grouped: list[tuple[str, list[str]]],
          res: dict[str, dict[str, Any]], info: dict[str, Any], load: float) -> str:
    jax_res = next((r for s, r in res.items() if s.startswith("jax:")), None)
    torch_res = next((r for s, r in res.items() if not s.startswith("jax:")), None)
    device = ("CPU" if jax_res is None or jax_res["platform"] == "cpu"
              else jax_res["device_kind"])
    med = {s: report.median(r["times"]) for s, r in res.items()}
    torch_info = (f"; torch threads {torch_res['threads']}, torch device {torch_res['device']}"
                  if torch_res else "")
    lines = [
        f"{model_label(args.model)}, batch {args.batch}, max_len {args.seq}, fp32, dropout on; "
        f"the same {args.repeats + 1} batches of VADER sentences (from a seeded sample of all "
        "four sets) on every side, tokenized and on the device before timing. One full "
        "optimisation step per new batch; median and min of "
        f"{args.repeats} steps after one warm-up step (JAX: its compilation, once per batch "
        "shape, in the last column). Each side in its own process; the sides of a method take "
        "their steps in turns, round by round in a rotating order.",
        "",
        f"Machine: {report.machine()}{f'; JAX on {device}' if device != 'CPU' else ''}. "
        f"Versions: {report.versions('jax', 'jaxlib', 'flax', 'optax', 'torch', 'transformers')}"
        f", {report.versions(ST_VERSION)}{torch_info}; load average {load:.2f} at the start.",
        "",
        "| method | side | padding | s/step (median) | min s | real tokens | vs "
        "sentence-transformers | vs our PyTorch | first step s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, sides in grouped:
        st = ("st:mnrl" if method == "simcse" else "st:triplet" if method in LABELLED else None)
        ref_st = med.get(st) if st else None
        ref_torch = med.get(f"torch:{method}")
        for side in sides:
            who, pad = describe_side(side, args, info)
            r, t = res[side], med[side]
            vs_st = f"{ref_st / t:.2f}x" if ref_st else ""
            vs_torch = f"{ref_torch / t:.2f}x" if ref_torch else ""
            lines.append(f"| {method} | {who} | {pad} | {t:.4f} | {r['times'][0]:.4f} | "
                         f"{fraction_of(side, info, r):.0%} | {vs_st} | {vs_torch} | "
                         f"{r['first']:.1f} |")
    lines += [
        "",
        "`vs ...` columns: the reference's median time over this row's (> 1: this row is "
        "faster); the sentence-transformers reference is MultipleNegativesRankingLoss on (s, s) "
        "pairs for SimCSE and BatchAllTripletLoss on the same made-up labels (valence bins of "
        f"{NUM_LABELS}) for retrofit and LCL. `real tokens`: the encoder input's real tokens over "
        "its token slots, over the timed batches (SimCSE and SoftCSE run two dropout views of "
        "each: the fraction is the same). The sentence-transformers step is a manual one "
        "(forward, loss, backward, clip to norm 1, AdamW) with its model, loss and padding; MNRL "
        "runs one forward per column, ours stacks both views into one forward. Our sides run "
        "the presets as configured (SoftMCL with its MLM term, momentum encoder and queues; "
        "retrofit with its frozen copy), so only SimCSE's rows compute what MNRL computes (InfoNCE "
        "at scale 20 = 1 / 0.05 between two dropout views; ours through the preset's "
        "projection head).",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="minilm", help="folder, or minilm (the shipped MiniLM)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=64, help="max_len")
    p.add_argument("--repeats", type=int, default=7, help="timed steps per side (>= 1)")
    p.add_argument("--sides", default="*",
                   help="comma list of sides or patterns (jax:<method>:<layout>, st:mnrl, "
                        "st:triplet, torch:<method>); default all")
    p.add_argument("--sentences", type=int, default=4096,
                   help="VADER sentences sampled for the pipeline (packing rows come from "
                        "their lengths)")
    p.add_argument("--no_write", action="store_true", help="print only")
    p.add_argument("--markdown", default=report.BENCHMARKS_MD)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--prep", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.worker:
        worker_main(args)
        return
    try:
        sides = select_sides(args.sides)
    except ValueError as e:
        p.error(str(e))
    load = os.getloadavg()[0]
    if load > 0.25 * (os.cpu_count() or 1):
        print(f"warning: load average {load:.1f} on {os.cpu_count()} cores: other processes "
              "compete for the CPU and the timings will not be reliable", flush=True)
    worker_env = dict(os.environ, PYTHONPATH=ROOT, TOKENIZERS_PARALLELISM="false")
    # Several workers share an accelerator at once (taking turns): JAX must not grab 75% of it.
    worker_env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    # This process only prepares the batches: keep it off the accelerator the workers measure.
    os.environ["JAX_PLATFORMS"] = "cpu"
    grouped = groups(sides)
    res: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_compare_st_") as prep:
        t0 = time.perf_counter()
        info = prepare(args, sides, prep)
        print(f"prepared {len(sides)} sides' batches in {time.perf_counter() - t0:.0f} s",
              flush=True)
        for _, group in grouped:
            res.update(run_group(group, args, prep, worker_env))
    text = table(args, grouped, res, info, load)
    print(text)
    if not args.no_write:
        jax_res = next((r for s, r in res.items() if s.startswith("jax:")), None)
        device = ("CPU" if jax_res is None or jax_res["platform"] == "cpu"
                  else jax_res["device_kind"])
        report.write_section(f"Training step vs sentence-transformers: {device}, batch "
                             f"{args.batch} x max_len {args.seq} (benchmarks/compare_st.py)",
                             text, path=args.markdown)


if __name__ == "__main__":
    main()
