"""``jaxlin train``: the lecture's run on synthetic data, every setting a flag."""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import re
import shlex
import threading
import time

from jaxlin.choices import COMPILED_ENGINES, ENGINES, ORDERS
from jaxlin.cli.common import (
    DEFAULT_CACHE,
    add_jax_flags,
    add_problem_flags,
    check_paths,
    config_record,
    configure_jax,
    epoch_line,
    given,
    interrupt_of,
    memory,
    path_flag,
    plots_to_files,
    seed,
    write_outputs,
)

MAX_HOST_DEVICES = 256  # --devices N: the most devices a run may ask for
CHECKPOINT_FILE = "checkpoint.npz"  # jaxlin.checkpoint.FILENAME, without importing JAX early
CHECKPOINT_FILES = re.compile(r"history\.[a-z0-9_]{8}\.bin|\.checkpoint\.npz\..*")  # the others

# The flags that say which run a checkpoint belongs to (lr, batch size and clip are
# added by fit_with_checkpoints; --epochs is not: a finished run can be extended).
RUN_FIELDS = ("w", "b", "noise", "num_train", "num_val", "seed", "sigma", "engine", "x64")

# What --data does not honour: the synthetic problem's flags (the data are on disk),
# and what streaming cannot do. Given with --data, each is refused rather than ignored.
NOT_WITH_DATA = (
    "num_train", "num_val", "w", "b", "noise", "engine", "checkpoint_dir", "plot_trajectory",
)  # fmt: skip

ENGINE_HELP = (
    "how jaxlin.fit runs the epochs: 'scan' compiles them (one XLA call per epoch, or per "
    "run with --quiet); 'affine' composes each epoch's steps as affine maps (no --clip); "
    "'step' jits one step and loops in Python; 'eager' runs without jit. Same batches, "
    "same result (default: %(default)s)"
)


def add_parser(sub) -> None:
    """Register ``train`` and its flags (defaults: the lecture's run)."""
    t = sub.add_parser(
        "train",
        help="train on the lecture's synthetic problem",
        description="Train on synthetic data with jaxlin.fit (defaults: the lecture's run). "
        "Values that start with '-' need '=': --w=-1,2. Ctrl-C stops after the current "
        "epoch (exit 130; with --checkpoint-dir, resumable).",
    )
    add_problem_flags(t)
    t.add_argument(
        "--num-val", type=int, default=1000, help="validation examples (default: %(default)s)"
    )
    t.add_argument(
        "--batch-size", type=int, default=32, help="minibatch size (default: %(default)s)"
    )
    t.add_argument("--lr", type=float, default=0.03, help="learning rate (default: %(default)s)")
    t.add_argument(
        "--epochs", type=int, default=3,
        help="passes over the training data (default: %(default)s)",
    )  # fmt: skip
    t.add_argument(
        "--seed", type=seed, default=0,
        help="seed of the root PRNG key, 0 .. 2**32-1 (default: %(default)s)",
    )  # fmt: skip
    t.add_argument(
        "--clip", type=float, default=0.0,
        help="gradient clip norm; 0 turns clipping off (default: %(default)s)",
    )  # fmt: skip
    t.add_argument(
        "--sigma", type=float, default=0.01,
        help="std of the initial weights (default: %(default)s)",
    )  # fmt: skip
    t.add_argument("--engine", choices=ENGINES, default="scan", help=ENGINE_HELP)
    t.add_argument("--plot", type=path_flag, default=None, help="write the loss curves (PNG)")
    t.add_argument(
        "--plot-trajectory", type=path_flag, default=None, metavar="FILE",
        help="write SGD's path through (w1, w2) on the contours of the loss (2 features only)",
    )  # fmt: skip
    t.add_argument("--json", type=path_flag, default=None, help="write the results as JSON")
    t.add_argument("--quiet", action="store_true", help="print only the final result")
    t.add_argument(
        "--data", type=path_flag, default=None,
        help="train from the shards in this folder (streamed from disk; see jaxlin generate)",
    )  # fmt: skip
    t.add_argument(
        "--order",
        choices=ORDERS,
        default="exact",
        help="with --data: 'exact' is fit's shuffle (a random read per row); 'runs' shuffles "
        "runs of 64 examples and reads across them (faster from disk, a coarser shuffle) "
        "(default: %(default)s)",
    )
    t.add_argument(
        "--checkpoint-dir",
        type=path_flag,
        default=None,
        help="write a checkpoint here after every epoch (and on Ctrl-C)",
    )
    t.add_argument(
        "--resume", action="store_true", help="continue the run saved in --checkpoint-dir"
    )
    t.add_argument("--x64", action="store_true", help="train in float64 (JAX's x64 mode)")
    t.add_argument(
        "--devices",
        type=devices_flag,
        default=None,
        help="train data-parallel over N devices, or 'all' local devices (with --device cpu "
        "and a number N, the CPU is split into N host devices; 'all' does not split it)",
    )
    add_jax_flags(t)


def devices_flag(text: str):
    """``--devices``: ``'all'`` or a positive int."""
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive int or 'all', got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int or 'all', got {value}")
    return value


def check_devices_flag(args) -> None:
    """``--devices`` refused before any work where data-parallel training cannot run."""
    if args.devices is not None:
        what = (
            f"--devices {args.devices} runs the scan engine on in-memory data, without checkpoints"
        )
        refuse_with(args, what, ("engine", "checkpoint_dir", "data"))
        if isinstance(args.devices, int) and args.devices > MAX_HOST_DEVICES:
            raise ValueError(
                f"--devices {args.devices}: at most {MAX_HOST_DEVICES}; a machine has no more "
                f"accelerators, and as --device cpu host devices each costs threads and memory"
            )


def refuse_with(args, what: str, dests) -> None:
    """One-line refusal of the first of ``dests`` that the user gave (``--engine scan``,
    which both streaming and data parallelism run, is honoured rather than refused)."""
    for dest in dests:
        if given(args, dest) and not (dest == "engine" and args.engine == "scan"):
            value = getattr(args, dest)
            shown = ",".join(map(repr, value)) if isinstance(value, list) else value
            raise ValueError(
                f"{what}; it cannot be combined with --{dest.replace('_', '-')} {shown}"
            )


def check_data_flags(args) -> None:
    """``--data`` refused with the flags that streaming does not honour (rather than ignored)."""
    if args.data is not None:
        what = f"--data {args.data} streams that dataset with the scan engine, without checkpoints"
        refuse_with(args, what, NOT_WITH_DATA)


def check_engine_flags(args) -> None:
    """``--engine affine --clip C``: refused in the command line's words, before any work."""
    if args.engine == "affine" and args.clip > 0:
        raise ValueError(
            "--engine affine cannot clip gradients (clipping is not an affine map): "
            "use --engine scan with --clip, or --clip 0"
        )


def floats_per_row(d: int, host_devices: int = 1) -> int:
    """Floats held at the peak of a run per example of ``d`` features: the draw and its
    splits, the epoch's shuffled copy and the compiled programs' temporaries (about six
    copies of ``X``; measured as peak RSS over rows for d from 2 to 50), and what
    ``host_devices`` CPU devices add (``checks.host_device_floats``)."""
    from jaxlin.checks import host_device_floats

    return 6 * d + 5 + host_device_floats(host_devices)


def check_sizes(args) -> None:
    """Refuse data or a loss history too large for this machine, before anything is made."""
    n = max(args.num_train, 1) + max(args.num_val, 1)
    big = "--num-train" if args.num_train >= args.num_val else "--num-val"
    host = args.devices if args.device == "cpu" and isinstance(args.devices, int) else 1
    memory(args, big, max(args.num_train, args.num_val), n * floats_per_row(len(args.w), host))
    steps = math.ceil(max(args.num_train, 1) / max(args.batch_size, 1))
    memory(args, "--epochs", args.epochs, max(args.epochs, 1) * (steps + 1))


def data_parallel_mesh(args):
    """The mesh of ``--devices``, or a one-line error that says how to get the devices."""
    import jax

    from jaxlin.parallel import data_mesh

    available = jax.devices()
    wanted = len(available) if args.devices == "all" else args.devices
    if wanted > len(available):
        hint = (
            f"; on a CPU, add --device cpu to split it into {wanted} host devices"
            if args.device is None and available[0].platform == "cpu"
            else ""
        )
        raise ValueError(
            f"--devices {wanted}: only {len(available)} {available[0].platform} "
            f"device(s) here{hint}"
        )
    return data_mesh(wanted)


def check_checkpoint_flags(args) -> None:
    """``--checkpoint-dir`` / ``--resume`` refused before any work when they cannot work."""
    folder = args.checkpoint_dir
    if args.order != "exact" and args.data is None:
        raise ValueError(f"--order {args.order} reads shards from disk: it needs --data DIR")
    if args.resume and folder is None:
        raise ValueError("--resume needs --checkpoint-dir DIR (the folder of the checkpoint)")
    if folder is None:
        return
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--checkpoint-dir {folder}: exists and is not a folder")
    if args.resume and not (folder / CHECKPOINT_FILE).is_file():
        raise ValueError(
            f"--checkpoint-dir {folder}: no {CHECKPOINT_FILE} to resume from "
            "(run without --resume to start)"
        )
    parent = folder
    while not parent.exists():  # the first folder that exists must be writable
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise ValueError(f"--checkpoint-dir {folder}: folder {parent} is not writable")


def resume_command(args) -> str:
    """The command line that resumes this run from its checkpoint."""
    words = ["jaxlin", "train", f"--w={','.join(repr(v) for v in args.w)}", f"--b={args.b!r}"]
    for flag in (
        "noise", "num_train", "num_val", "batch_size", "lr", "epochs", "seed", "clip", "sigma",
        "engine", "checkpoint_dir", "json", "plot", "plot_trajectory", "device", "cache_dir",
    ):  # fmt: skip
        value = getattr(args, flag)
        if value is not None and not (flag == "cache_dir" and value == DEFAULT_CACHE):
            words.append(f"--{flag.replace('_', '-')}={value}")
    words += [f"--{f.replace('_', '-')}" for f in ("x64", "quiet", "no_cache") if getattr(args, f)]
    return shlex.join([*words, "--resume"])


def checkpoint_file(name: str) -> bool:
    """Whether a file called ``name`` in a checkpoint folder is one jaxlin keeps there."""
    return name == CHECKPOINT_FILE or bool(CHECKPOINT_FILES.fullmatch(name))


def run(args) -> dict:
    """Data, init, fit, report; returns the JSON record."""
    plots_to_files()
    check_paths(
        [("--json", args.json), ("--plot", args.plot), ("--plot-trajectory", args.plot_trajectory)],
        folders=[
            ("--data", args.data, None),
            ("--checkpoint-dir", args.checkpoint_dir, checkpoint_file),
        ],
    )
    if args.plot_trajectory is not None and args.data is None and len(args.w) != 2:
        raise ValueError(
            f"--plot-trajectory draws the path through (w1, w2): it needs 2 features, "
            f"got --w with {len(args.w)} values"
        )
    check_data_flags(args)
    check_checkpoint_flags(args)
    check_devices_flag(args)
    check_engine_flags(args)
    interrupt = interrupt_of(args)
    if args.data is None:
        check_sizes(args)
    import jax

    if args.x64:  # before any array is made
        jax.config.update("jax_enable_x64", True)
    # The lecture's run in memory compiles only jaxlin's stored programs (the data, the
    # epochs): the next run loads them whole, with no tracing.
    if args.device == "cpu" and isinstance(args.devices, int) and args.devices > 1:
        try:
            jax.config.update("jax_num_cpu_devices", args.devices)  # before the backend starts
        except RuntimeError as err:  # JAX already started here (main() called in-process)
            raise ValueError(f"--devices {args.devices}: JAX has already started ({err})") from None
    only_stored = args.data is None and args.devices is None and args.plot_trajectory is None
    configure_jax(args, store=only_stored and args.engine in COMPILED_ENGINES)
    mesh = None if args.devices is None else data_parallel_mesh(args)
    if args.data is not None:  # shards on disk: jaxlin/cli/train_data.py
        from jaxlin.cli import train_data

        return train_data.run(args)
    import numpy as np

    import jaxlin
    from jaxlin.engines import compiler

    interrupt.check("interrupted before training started; nothing saved")
    # Without a per-epoch callback the scan engine runs every epoch in one compiled call
    # (fastest); Ctrl-C is then honoured when that call returns.
    per_epoch = (
        not args.quiet or args.checkpoint_dir is not None or args.engine in ("step", "eager")
    )
    inputs = lecture_inputs(args)  # refused here, before anything compiles
    ahead = None if compiler.storing() else compile_fit_ahead(args, per_epoch, mesh)
    try:
        data, params, key_shuffle = setup(args, inputs)
    finally:  # never left compiling while the process ends
        if ahead is not None:
            ahead.join()
    initial = params
    interrupt.check("interrupted before training started; nothing saved")
    if args.checkpoint_dir is not None:  # what a second Ctrl-C, which exits at once, leaves
        interrupt.saved = f"{args.checkpoint_dir / CHECKPOINT_FILE} holds the last finished epoch"
    start = time.perf_counter()

    def progress(end: jaxlin.EpochEnd) -> None:
        if not args.quiet:
            print(epoch_line(args, end, time.perf_counter() - start), flush=True)
        if end.epoch + 1 < args.epochs:  # after the last epoch: checked once fit returns
            interrupt.check(interrupted_message(args, end.epoch + 1))

    kwargs = dict(
        lr=args.lr,
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        key=key_shuffle,
        gradient_clip_val=args.clip,
        engine=args.engine,
    )
    callback = progress if per_epoch else None
    if args.checkpoint_dir is not None:
        from jaxlin.checkpoint import fit_with_checkpoints

        run_config = {k: getattr(args, k) for k in RUN_FIELDS}
        params, history = fit_with_checkpoints(
            params,
            data.train,
            data.val,
            checkpoint_dir=args.checkpoint_dir,
            resume=args.resume,
            run=run_config,
            callback=callback,
            **kwargs,
        )
    elif mesh is not None:
        from jaxlin.parallel import fit_data_parallel

        del kwargs["engine"]  # the scan engine, sharded
        params, history = fit_data_parallel(
            params, data.train, data.val, mesh=mesh, callback=callback, **kwargs
        )
    else:
        params, history = jaxlin.fit(params, data.train, data.val, callback=callback, **kwargs)
    interrupt.check(interrupted_message(args, args.epochs, finished=True))
    if mesh is not None:
        s = "s" if mesh.size > 1 else ""
        print(f"trained data-parallel over {mesh.size} {mesh.devices.flat[0].platform} device{s}")
    w, b = np.asarray(params["w"]).ravel(), float(np.asarray(params["b"])[0])
    w_err, b_err = np.asarray(data.w) - w, float(data.b) - b  # on the host: no compiles
    print(f"learned w: {np.array2string(w, precision=4)}  b: {b:.4f}")
    print(f"error in estimating w: {np.array2string(w_err, precision=4)}")
    print(f"error in estimating b: {b_err:.4f}")
    record = {
        "config": config_record(args),
        "w": w.tolist(),
        "b": b,
        "w_error": w_err.tolist(),
        "b_error": b_err,
        "train_loss": history.train_loss.ravel().tolist(),
        "val_loss": history.val_loss.tolist(),
        "steps_per_epoch": int(history.train_loss.shape[1]),
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "devices": 1 if mesh is None else mesh.size,
    }
    title = f"lr={args.lr}, batch={args.batch_size}"
    written = write_outputs(
        args, record, lambda path: jaxlin.plot.save_history_plot(history, path, title=title)
    )
    if args.plot_trajectory is not None:
        write_trajectory(args, initial, data.train, key_shuffle, written)
    return record


def write_trajectory(args, params, train, key, written: list[str]) -> None:
    """``--plot-trajectory``: the run's every step, recorded in one compiled call, drawn."""
    import jaxlin

    path = jaxlin.trajectory(
        params, train, key=key, lr=args.lr, max_epochs=args.epochs,
        batch_size=args.batch_size, gradient_clip_val=args.clip,
    )  # fmt: skip
    title = f"SGD path: lr={args.lr}, batch={args.batch_size}, {args.epochs} epochs"
    jaxlin.plot.save_trajectory_plot(path, train, args.plot_trajectory, title=title)
    written.append(str(args.plot_trajectory))
    interrupt_of(args).saved = f"{', '.join(written)} written"


def compile_fit_ahead(args, per_epoch: bool, mesh) -> threading.Thread | None:
    """A thread compiling the program ``fit`` will run, while ``setup`` compiles the data's.

    Both compiles then share the machine's cores instead of taking turns. Only
    for the plain run (one device, no checkpoints) of a compiled engine, and
    not while programs are stored on disk (the caller asks: the store loads or
    compiles them itself). A failure here is left to ``fit``, which compiles
    and reports as usual.
    """
    if mesh is not None or args.checkpoint_dir is not None or args.engine not in COMPILED_ENGINES:
        return None

    def compile_fit():
        import jax

        from jaxlin import config, trainer

        with contextlib.suppress(Exception):
            run = config.make_config(
                lr=args.lr, max_epochs=args.epochs, batch_size=args.batch_size,
                gradient_clip_val=args.clip, engine=args.engine,
            )  # fmt: skip
            dtype = jax.numpy.result_type(float)
            trainer.compile_ahead(
                run, args.num_train, args.num_val, len(args.w), dtype, per_epoch=per_epoch
            )

    thread = threading.Thread(target=compile_fit, name="jaxlin-compile-fit", daemon=True)
    thread.start()
    return thread


def lecture_inputs(args) -> tuple:
    """``(w, b, sizes, noise, sigma)`` for ``setup``: the library's checks of the flags."""
    from jaxlin import checks
    from jaxlin.data import splits_args

    w, b, sizes, noise = splits_args(
        args.w, args.b, num_train=args.num_train, num_val=args.num_val, noise=args.noise
    )
    return w, b, sizes, noise, checks.finite_float("sigma", args.sigma, nonnegative=True)


def setup(args, inputs: tuple | None = None):
    """The lecture's data, initial parameters and shuffle key from ``--seed``, as one program.

    Drawn function by function, the keys, the data and the initial weights are
    three compiles; jitted together, one. The library's checks run first, on
    the host (``lecture_inputs``, unless given), and the values are the
    library's, bit for bit (tested).
    """
    import jax
    import numpy as np

    from jaxlin.data import Splits, draw
    from jaxlin.engines import compiler
    from jaxlin.model import draw_params

    w, b, sizes, noise, sigma = lecture_inputs(args) if inputs is None else inputs

    # LLVM at -O1: the same bits as the defaults, and a quicker compile of the
    # normal sampler's large code (-O0 changes the draws in the last bit). The
    # seed and the truth are arguments: constants would be folded at compile
    # time, in other arithmetic.
    @functools.partial(
        compiler.jit, extra={"xla_backend_optimization_level": 1}, store_as=(sizes, len(w))
    )
    def lecture(seed, w, b, noise, sigma):
        key_data, key_init, key_shuffle = jax.random.split(jax.random.key(seed), 3)
        (train, val), w, b = draw(key_data, w, b, noise, sizes)
        return Splits(train, val, None, w, b), draw_params(key_init, sigma, len(w)), key_shuffle

    return lecture(np.uint32(args.seed), w, b, noise, sigma)


def interrupted_message(args, epochs_done: int, *, finished: bool = False) -> str:
    """What Ctrl-C prints: how far the run got, where the checkpoint is, how to resume."""
    text = f"interrupted after epoch {epochs_done}/{args.epochs}"
    if finished:
        text += " (training done, results not reported)"
    if args.checkpoint_dir is None:
        return f"{text}; nothing saved (pass --checkpoint-dir DIR to be able to resume)"
    where = args.checkpoint_dir / CHECKPOINT_FILE
    if finished:
        return f"{text}; checkpoint written to {where}"
    return f"{text}; checkpoint written to {where}\nresume with: {resume_command(args)}"
