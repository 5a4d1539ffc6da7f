"""Two processes on localhost (2 CPU devices each) train like one process."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxlin

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent(
    """
    import json
    from jaxlin import parallel
    assert parallel.initialize_distributed()  # from the JAXLIN_* variables
    import jax, numpy as np, jaxlin
    key = jax.random.key(7)
    s = jaxlin.synthetic_splits(key, num_train=203, num_val=40)
    p0 = jaxlin.init_params(key, 2)
    got, h = parallel.fit_data_parallel(p0, s.train, s.val, batch_size=32, key=key,
                                        max_epochs=2)
    print(json.dumps(dict(pid=jax.process_index(), devices=jax.device_count(),
                          local=jax.local_device_count(), w=np.asarray(got["w"]).tolist(),
                          b=np.asarray(got["b"]).tolist(), loss=h.train_loss.tolist())))
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process():
    port = free_port()
    procs = []
    for pid in range(2):
        env = dict(
            os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
            XLA_FLAGS="--xla_force_host_platform_device_count=2",
            JAXLIN_COORDINATOR=f"127.0.0.1:{port}", JAXLIN_NUM_PROCESSES="2",
            JAXLIN_PROCESS_ID=str(pid),
        )  # fmt: skip
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", WORKER],
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    key = jax.random.key(7)
    s = jaxlin.synthetic_splits(key, num_train=203, num_val=40)
    ref, h_ref = jaxlin.fit(
        jaxlin.init_params(key, 2), s.train, s.val, batch_size=32, key=key, max_epochs=2
    )
    assert sorted(o["pid"] for o in outs) == [0, 1]
    for o in outs:
        assert o["devices"] == 4 and o["local"] == 2
        np.testing.assert_allclose(o["w"], ref["w"], atol=1e-5)
        np.testing.assert_allclose(o["b"], ref["b"], atol=1e-5)
        np.testing.assert_allclose(o["loss"], h_ref.train_loss, atol=1e-5)
