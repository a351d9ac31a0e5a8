"""Where a job runs (cluster.kind), a cluster that cannot start, and inputs that name no file."""

import json
import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from gigaseg.errors import InputError
from gigaseg.jobs import runner
from gigaseg.jobs.cli import cli
from gigaseg.jobs.jobfile import load_job
from gigaseg.jobs.runner import REPORT_NAME, ClusterError, prepare_scene
from tests.conftest import small_unet, write_tiff

README = Path(__file__).parent.parent / "README.md"

JOB = """inputs: {inputs}
model: m.pt
output: {{dir: out}}
tiling: {{block: 64, chunk: 64, batch_size: 2}}
cluster: {cluster}
"""


@pytest.fixture
def job_dir(tmp_path, rng):
    """Two small scenes (one block each) and a small model."""
    (tmp_path / "scenes").mkdir()
    for i in range(2):
        write_tiff(tmp_path / "scenes" / f"s{i}.tif", rng.integers(0, 200, (3, 64, 64)).astype(np.uint8))
    small_unet(tmp_path / "m.pt", seed=1)
    return tmp_path


def write_job(job_dir: Path, cluster: str, inputs: str = "['scenes/*.tif']") -> Path:
    path = job_dir / "job.yaml"
    path.write_text(JOB.format(inputs=inputs, cluster=cluster))
    return path


def fake_sbatch(folder: Path, script: str = "exit 0") -> Path:
    """A folder holding an ``sbatch`` that runs ``script``, to put first on PATH."""
    folder.mkdir(exist_ok=True)
    sbatch = folder / "sbatch"
    sbatch.write_text(f"#!/bin/sh\n{script}\n")
    sbatch.chmod(0o755)
    return folder


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gigaseg: error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def stores(job_dir: Path) -> list[str]:
    out = job_dir / "out"
    return sorted(p.name for p in out.iterdir() if p.name != REPORT_NAME) if out.exists() else []


# --- the kind, as the job file declares it ------------------------------------------------


@pytest.mark.parametrize(
    ("cluster", "message"),
    [
        (
            "{slurm: {queue: gpu}}",
            "cluster.slurm is for cluster.kind slurm, but cluster.kind is local (the default); "
            "set cluster.kind: slurm, or drop cluster.slurm",
        ),
        (
            "{kind: local, scheduler: 'tcp://10.0.0.5:8786'}",
            "cluster.scheduler is for cluster.kind scheduler, but cluster.kind is local; set cluster.kind: scheduler",
        ),
        ("{kind: slurm, workers: 2}", "cluster.workers is for cluster.kind local, but cluster.kind is slurm"),
        ("{kind: scheduler, slurm: {jobs: 2}}", "cluster.slurm is for cluster.kind slurm, but cluster.kind is sch"),
        ("{kind: scheduler}", "cluster.kind scheduler needs cluster.scheduler"),
        ("{kind: pbs}", "cluster.kind: Input should be 'local', 'scheduler' or 'slurm'"),
        ("{kind: slurm, slurm: {jobs: 0}}", "cluster.slurm.jobs: Input should be greater than 0"),
    ],
)
def test_keys_of_another_kind_are_refused_in_one_line(job_dir, cluster, message):
    with pytest.raises(InputError, match=re.escape(message)):
        load_job(write_job(job_dir, cluster))
    line = one_error_line(invoke("run", job_dir / "job.yaml", "--dry-run"))
    assert f"job file {job_dir / 'job.yaml'}: {message}" in line


def test_the_kind_is_local_unless_the_file_says_otherwise(job_dir):
    assert load_job(write_job(job_dir, "{workers: 2}")).cluster.kind == "local"
    assert load_job(write_job(job_dir, "{kind: slurm}")).cluster.kind == "slurm"
    job = load_job(write_job(job_dir, "{kind: scheduler, scheduler: 'tcp://h:8786', retries: 1}"))
    assert (job.cluster.kind, job.cluster.scheduler, job.cluster.retries) == ("scheduler", "tcp://h:8786", 1)


SLURM = "{kind: slurm, slurm: {queue: gpu, jobs: 4, cores: 8, memory: 16GB, walltime: '00:30:00', lifetime: 20m}}"


@pytest.mark.parametrize(
    ("cluster", "flags", "first_line"),
    [
        ("{workers: 2}", [], "cluster: local, 2 workers x "),
        ("{kind: local, workers: 1, threads_per_worker: 3}", [], "cluster: local, 1 worker x 3 threads, 3 retries"),
        (
            SLURM,
            [],
            "cluster: slurm, 4 jobs of 8 cores, 16GB each, walltime 00:30:00, queue gpu, "
            "workers replaced every 20m, 3 retries per block",
        ),
        ("{kind: scheduler, scheduler: 'tcp://10.0.0.5:8786'}", [], "cluster: scheduler tcp://10.0.0.5:8786, 3 ret"),
        # a flag picks the kind for one run
        ("{workers: 2}", ["--scheduler", "tcp://h:1"], "cluster: scheduler tcp://h:1,"),
        ("{workers: 2}", ["--slurm", "--slurm-jobs", "2"], "cluster: slurm, 2 jobs of 2 cores"),
        (SLURM, ["--slurm-jobs", "2"], "cluster: slurm, 2 jobs of 8 cores, 16GB each"),
        (SLURM, ["--local", "--workers", "3"], "cluster: local, 3 workers x "),
        ("{kind: scheduler, scheduler: 'tcp://h:1'}", ["--local"], "cluster: local, "),
    ],
)
def test_dry_run_shows_the_cluster_first(job_dir, monkeypatch, cluster, flags, first_line):
    monkeypatch.setenv("PATH", f"{fake_sbatch(job_dir / 'bin')}:{os.environ['PATH']}")
    result = invoke("run", write_job(job_dir, cluster), "--dry-run", *flags)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].startswith(first_line), result.stdout
    assert result.stdout.count("new") == 2
    assert not stores(job_dir)


@pytest.mark.parametrize(
    ("cluster", "flags", "message"),
    [
        ("{workers: 2}", ["--local", "--slurm"], "--local and --slurm choose different clusters; give one"),
        ("{workers: 2}", ["--slurm-queue", "gpu"], "--slurm-queue sets a SLURM cluster, but this run's cluster is loc"),
        (SLURM, ["--workers", "2"], "--workers sizes a local cluster, but this run's cluster is slurm"),
        ("{workers: 2}", ["--scheduler", "tcp://h:1", "--workers", "2"], "this run's cluster is scheduler (--sched"),
        (SLURM, ["--slurm-cores", "0"], "--slurm-cores: Input should be greater than 0"),
    ],
)
def test_flags_that_do_not_fit_the_kind_are_refused(job_dir, cluster, flags, message):
    line = one_error_line(invoke("run", write_job(job_dir, cluster), *flags))
    assert message in line
    assert not (job_dir / "out").exists()


def test_run_job_overrides_name_their_kind(job_dir):
    from gigaseg.jobs.jobfile import Slurm

    job = load_job(write_job(job_dir, "{workers: 2, retries: 1}"))
    assert runner.run_cluster(job, workers=3).workers == 3
    by_slurm = runner.run_cluster(job, slurm=Slurm(jobs=2))
    assert (by_slurm.kind, by_slurm.slurm.jobs, by_slurm.retries, by_slurm.workers) == ("slurm", 2, 1, None)
    with pytest.raises(InputError, match="workers sizes a local cluster, but this run's cluster.kind is scheduler"):
        runner.run_cluster(job, scheduler="tcp://h:1", workers=2)
    with pytest.raises(InputError, match="give scheduler or slurm, not both"):
        runner.run_cluster(job, scheduler="tcp://h:1", slurm=Slurm())


# --- a cluster that cannot start ----------------------------------------------------------


def test_slurm_without_sbatch_is_one_line_exit_2_and_leaves_no_store(job_dir, monkeypatch, tmp_path_factory):
    monkeypatch.setenv("PATH", str(tmp_path_factory.mktemp("empty-bin")))
    job = write_job(job_dir, SLURM)
    line = one_error_line(invoke("run", job))
    assert line == "gigaseg: error: sbatch not found: is SLURM installed? (cluster.kind: slurm)"
    assert not stores(job_dir)
    report = json.loads((job_dir / "out" / REPORT_NAME).read_text())
    assert report["ok"] is False and "sbatch not found" in report["error"]
    assert [s["status"] for s in report["scenes"]] == ["pending", "pending"]
    assert all(s["error"].startswith("not run: sbatch not found") for s in report["scenes"])
    assert report["cluster"].startswith("cluster: slurm, 4 jobs of 8 cores")
    # the dry run says so too, after the plan
    result = invoke("run", job, "--dry-run")
    assert one_error_line(result) == line
    assert result.stdout.startswith("cluster: slurm")


def test_a_slurm_that_refuses_the_worker_jobs_leaves_no_empty_store(job_dir, monkeypatch):
    """sbatch --test-only fails (an unknown queue): one line, exit 2, from the run and from its
    dry run; the plain rerun works."""
    bin_dir = fake_sbatch(job_dir / "bin", 'echo "sbatch: error: invalid partition specified: gpu" >&2\nexit 1')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    job = write_job(job_dir, SLURM)
    line = one_error_line(invoke("run", job))
    assert line == (
        "gigaseg: error: SLURM refuses the worker jobs: sbatch: error: invalid partition specified: gpu "
        "(cluster.kind: slurm)"
    )
    assert not stores(job_dir)  # refused before any store was made
    assert "invalid partition" in json.loads((job_dir / "out" / REPORT_NAME).read_text())["error"]
    dry = invoke("run", job, "--dry-run")  # the dry run puts the same worker job to sbatch --test-only
    assert one_error_line(dry) == line and dry.stdout.startswith("cluster: slurm")
    result = invoke("run", job, "--local", "--workers", "1")  # no --overwrite needed
    assert result.exit_code == 0, result.output
    assert stores(job_dir) == ["s0_mask.zarr", "s1_mask.zarr"]


def test_no_worker_joining_the_scheduler_is_one_line_exit_2(job_dir, monkeypatch):
    from distributed import LocalCluster

    monkeypatch.setattr(runner, "WORKER_START_TIMEOUT", 1.0)
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as empty:
        job = write_job(job_dir, f"{{kind: scheduler, scheduler: '{empty.scheduler_address}'}}")
        line = one_error_line(invoke("run", job))
    assert line == (
        f"gigaseg: error: no Dask worker started within 1 s; are workers started for "
        f"{empty.scheduler_address}? (cluster.kind: scheduler)"
    )
    assert not stores(job_dir)
    assert "no Dask worker started" in json.loads((job_dir / "out" / REPORT_NAME).read_text())["error"]


def test_a_run_ended_early_keeps_the_stores_that_got_blocks(job_dir):
    job = load_job(write_job(job_dir, "{workers: 1}"))
    (job_dir / "out").mkdir()
    states = [prepare_scene(spec) for spec in job.scenes(base=job_dir)]
    try:
        runner_of_s0 = states[0].runner
        runner_of_s0.run(next(iter(runner_of_s0.plan.blocks.indices())))  # one block lands in s0
        report = runner.RunReport([s.result for s in states])
        runner._ended_early(report, states, ClusterError("the cluster went away"))
    finally:
        for state in states:
            state.release()
    assert stores(job_dir) == ["s0_mask.zarr"]  # s1 had no block: removed; s0 stays for --resume
    assert zarr.open_array(str(job_dir / "out" / "s0_mask.zarr" / "blocks_done"))[:].sum() == 1
    assert report.error == "the cluster went away"
    assert [s.error for s in report.scenes] == ["not run: the cluster went away"] * 2


# --- inputs that name no file -------------------------------------------------------------


def test_a_missing_input_fails_only_its_scene(job_dir):
    job = write_job(job_dir, "{workers: 1}", inputs="['scenes/s0.tif', 'extra/s7.tif']")
    result = invoke("run", job)
    assert result.exit_code == 1, result.output  # as for any failed scene
    report = json.loads((job_dir / "out" / REPORT_NAME).read_text())
    status = {Path(s["input"]).name: (s["status"], s["error"]) for s in report["scenes"]}
    assert status == {"s0.tif": ("done", None), "s7.tif": ("failed", "input extra/s7.tif does not exist")}
    assert report["ok"] is False and report["error"] is None
    assert "error: input extra/s7.tif does not exist" in result.stdout
    assert stores(job_dir) == ["s0_mask.zarr"]
    status_lines = invoke("status", job).stdout.splitlines()
    assert status_lines[0].endswith("s0_mask.zarr: complete")
    assert status_lines[1] == f"{job_dir / 'extra/s7.tif'}: missing (input extra/s7.tif does not exist)"


def test_dry_run_lists_missing_inputs_as_failing(job_dir):
    job = write_job(job_dir, "{workers: 1}", inputs="['scenes/*.tif', 'extra/s7.tif', 'nowhere/*.tif']")
    result = invoke("run", job, "--dry-run")
    assert one_error_line(result) == (
        "gigaseg: error: 2 of 4 scenes would fail (FAILS above); fix or drop those inputs"
    )
    lines = result.stdout.splitlines()
    assert lines[0].startswith("cluster: local, 1 worker")
    assert f"{job_dir / 'extra/s7.tif'}: FAILS: input extra/s7.tif does not exist" in lines
    assert f"{job_dir / 'nowhere/*.tif'}: FAILS: input pattern 'nowhere/*.tif' matches no file" in lines
    assert sum("new" in line for line in lines) == 2


def test_a_job_whose_every_input_is_missing_starts_no_cluster(job_dir, monkeypatch):
    monkeypatch.setattr(runner, "dask_client", None)  # calling it would fail the test
    job = write_job(job_dir, "{workers: 1}", inputs="['nowhere/*.tif']")
    result = invoke("run", job)
    assert result.exit_code == 1, result.output
    report = json.loads((job_dir / "out" / REPORT_NAME).read_text())
    assert report["scenes"] == [
        {**report["scenes"][0], "status": "failed", "error": "input pattern 'nowhere/*.tif' matches no file"}
    ]


# --- the README's example, as written -----------------------------------------------------


def readme_batch_blocks() -> list[tuple[str, str]]:
    text = README.read_text()
    section = text[text.index("## Batch jobs on a cluster") : text.index("### Airflow")]
    return re.findall(r"```(\w*)\n(.*?)```", section, re.S)


def test_the_readme_job_files_are_valid(tmp_path):
    kinds = {}
    for lang, body in readme_batch_blocks():
        if lang == "yaml":
            name = body.split(":", 1)[0].removeprefix("# ")  # each block's first line names its file
            (tmp_path / name).write_text(body)
            kinds[name] = load_job(tmp_path / name).cluster.kind
    assert kinds == {"job.yaml": "local", "slurm-job.yaml": "slurm", "cloud-job.yaml": "scheduler"}


def test_the_readme_example_runs_as_written_up_to_its_dry_run(tmp_path, monkeypatch):
    """The set-up block, then job.yaml: two scenes new, scene_07 FAILS, the local cluster named."""
    blocks = readme_batch_blocks()
    setup = next(body for lang, body in blocks if lang == "bash" and "write_landcover_tiff" in body)
    assert setup.startswith('mkdir batch && cd batch\npython -c "')
    code = shlex.split(setup.split("\n", 1)[1])[2]  # the python -c program, unquoted as the shell would
    job_text = next(body for lang, body in blocks if lang == "yaml" and body.startswith("# job.yaml"))
    (tmp_path / "batch").mkdir()
    monkeypatch.chdir(tmp_path / "batch")
    exec(compile(code.replace("(1024, 1024)", "(256, 256)"), "README", "exec"), {})  # smaller, same names
    Path("job.yaml").write_text(job_text)
    result = invoke("run", "job.yaml", "--dry-run")
    assert one_error_line(result).endswith("1 of 3 scenes would fail (FAILS above); fix or drop those inputs")
    lines = result.stdout.splitlines()
    assert lines[0].startswith("cluster: local, 2 workers x ")
    assert [line.rsplit(": ", 1)[-1] for line in lines[1:3]] == ["new", "new"]
    assert lines[3].endswith("extra/scene_07.tif: FAILS: input extra/scene_07.tif does not exist")
