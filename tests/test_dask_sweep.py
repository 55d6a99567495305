"""The design-space sweep on a Dask cluster (docs/perf/dse.md): the jobs run in Dask's worker
processes and give the same place and route as local processes.

The cluster is a ``distributed.LocalCluster`` of two worker processes on this machine: the same
scheduler, workers and pickling as a cluster of machines, minus the network. Without the
``bench`` extra (no ``distributed``) the cluster tests are skipped.
"""

import os
import pathlib
import sys

import pytest

from tritium.hw.params import CONFIGS
from tritium.paths import BUILD_DIR_ENV
from tritium.sim import bench

#: what two runs of the same job may differ in: the folder they ran in and how long they took
WHERE_AND_HOW_LONG = ("build_dir", "pnr_seconds")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A client of two single-threaded worker processes whose build folder is their own,
    empty one (so a job cannot reuse an earlier run's result: the tools run on the worker)."""
    distributed = pytest.importorskip("distributed")
    build = tmp_path_factory.mktemp("cluster-build")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  env={BUILD_DIR_ENV: str(build)}) as cluster, \
            distributed.Client(cluster) as client:
        yield client, build


def worker_tasks(stream, prefix="_run_point-"):
    """The workers (addresses) the recorded tasks named ``prefix...`` ran on, one per task."""
    return sorted(t["worker"] for t in stream.data if t["key"].startswith(prefix))


@pytest.mark.slow
@pytest.mark.synth
def test_sweep_on_dask_workers_matches_local_processes(cluster, tmp_path, monkeypatch):
    import distributed
    client, build = cluster
    points = [bench.SweepPoint(params=CONFIGS["tiny"].as_dict(), device="up5k", seed=seed, freq_mhz=48,
                               name="dask-tiny") for seed in (1, 2)]
    pids = client.run(os.getpid)  # worker address -> its process id
    with distributed.get_task_stream(client) as stream:
        remote = bench.sweep(points, executor=client.get_executor())
    # each job ran as one Dask task on one of the two worker processes, not in this one
    ran_on = worker_tasks(stream)
    assert len(ran_on) == 2 and set(ran_on) <= set(pids), (ran_on, pids)
    assert os.getpid() not in pids.values()
    # ... and the worker ran the tools itself, in its own (empty) build folder, with the YoWASP
    # tools found beside its own interpreter: the bitstream and nextpnr's log are there
    for r in remote:
        work = pathlib.Path(r["build_dir"])
        assert work.is_relative_to(build), work
        assert (work / "top.bin").stat().st_size > 0 and (work / "nextpnr.log").exists()

    # the same points in local processes, in another empty build folder
    monkeypatch.setenv(BUILD_DIR_ENV, str(tmp_path / "local-build"))
    local = bench.sweep(points, max_workers=2)
    assert all(pathlib.Path(r["build_dir"]).is_relative_to(tmp_path / "local-build") for r in local)

    # nextpnr is deterministic for a netlist, seed and clock: the same cells, memories and Fmax
    # per point, in input order, whichever machine ran it
    def same(rs):
        return [{k: v for k, v in r.items() if k not in WHERE_AND_HOW_LONG} for r in rs]

    assert [r["seed"] for r in remote] == [1, 2]
    assert all(r["logic_used"] > 0 for r in remote)
    assert same(remote) == same(local)


@pytest.mark.slow
@pytest.mark.synth
def test_sweep_cli_sends_jobs_to_a_scheduler(cluster, capsys):
    import distributed
    client, build = cluster
    address = client.scheduler.address
    with distributed.get_task_stream(client) as stream:
        assert bench.main(["sweep", "--lanes", "1", "--trits", "1", "--devices", "up5k", "--seeds", "3",
                           "--scheduler", address]) == 0
    # the CLI's own client sent the one job to the cluster's workers, which built it in their folder
    (ran_on,) = worker_tasks(stream)
    assert ran_on in client.run(os.getpid)
    assert list(build.glob("synth/up5k/sweep-1x1-trit2/seed3/top.bin"))
    # and it printed the (one-point) Pareto front
    out = capsys.readouterr().out
    assert "Pareto front on up5k" in out and "1x1-trit2" in out, out


def test_sweep_cli_without_distributed_names_the_extra(monkeypatch):
    # with Dask's distributed not importable, --scheduler fails at once, naming the extra to install
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(SystemExit) as exc:
        bench.main(["sweep", "--lanes", "1", "--trits", "1", "--scheduler", "tcp://127.0.0.1:8786"])
    assert exc.value.code == "--scheduler needs Dask's distributed package: pip install 'tritium[bench]'"
