"""Execution profiles as the engine resolves them for a run: -profile local (one GPU workstation), -profile slurm
(any SLURM cluster) and -profile ncc (slurm with Durham NCC's defaults).

`nextflow config` takes no pipeline parameters, yet params given on the command line decide the caps
(process.resourceLimits is computed from --max_* while the configuration is read) and the SLURM options. So
every variant is resolved in ONE JVM by Nextflow's own ConfigBuilder with the command line's params, as
`nextflow run` builds its configuration (no pipeline is launched), and the per-task settings come from a
real TaskConfig (closures evaluated against the resolved params, resourceLimits applied), the sbatch header
of a GPU job and of a CPU job from the real SlurmExecutor, the local executor's totals from the real
LocalPollingMonitor. The head's parameter check (LayerwiseSchema on nextflow_schema.json) runs on each
variant's params in the same JVM.
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.support.engine import ROOT, groovy_command, nextflow_env
from tests.unit.test_conventions import COMMAND_LINE, _schema_validator

SCHEMA = ROOT / "nextflow_schema.json"
SLURM_LOCAL = ROOT / "conf" / "slurm_local.config"
GIB = 1 << 30

# name -> (-profile, params as given on the command line (strings, as Nextflow's CLI parses them), -c files)
VARIANTS = {
    "local": ("local", {}, []),
    "local_caps": ("local", {"max_memory": "100.GB", "max_cpus": "3"}, []),
    "local_docker": ("local,docker", {}, []),
    "slurm_defaults": ("slurm", {}, []),
    "slurm": ("slurm", {"gpu_type": "h100", "slurm_qos": "high", "cluster_options": "--constraint=ib",
                        "slurm_account": "proj", "gpu_partition": "gpu-h100"}, []),
    "slurm_gres": ("slurm", {"gpu_type": "h100", "gpu_gres": "gpu:1g.10gb:1"}, []),
    "slurm_h200": ("slurm", {"gpu_type": "h200"}, []),
    "slurm_bad": ("slurm", {"gpu_type": "h100 --exclusive", "gpu_gres": "gpu:1 --x", "slurm_qos": "a b"}, []),
    # `--cluster_options --constraint=ib` (no '='): Nextflow's command line gives two flags
    "slurm_no_equals": ("slurm", {"cluster_options": "true", "constraint": "ib"}, []),
    "ncc": ("ncc", {}, []),
    "ncc_caps": ("ncc", {"max_memory": "100.GB", "gpu_memory": "300 GB", "gpu_type": "h100"}, []),
    "ncc_slurm_local": ("ncc", {}, [str(SLURM_LOCAL)]),
}

GROOVY = r"""
import groovy.json.JsonOutput
import groovy.json.JsonSlurper
import java.lang.management.ManagementFactory
import java.nio.file.Paths
import nextflow.Session
import nextflow.cli.CliOptions
import nextflow.cli.CmdRun
import nextflow.config.ConfigBuilder
import nextflow.executor.SlurmExecutor
import nextflow.processor.LocalPollingMonitor
import nextflow.processor.TaskConfig
import nextflow.processor.TaskRun

def gcl = new GroovyClassLoader(); gcl.addClasspath(args[0])
def input = new JsonSlurper().parse(new File(args[1]))
def root = Paths.get(input.root)
def schema = gcl.loadClass('LayerwiseSchema').newInstance(Paths.get(input.schema))

def plain
plain = { v ->
    if (v == null || v instanceof Boolean || v instanceof Number || v instanceof CharSequence) return v instanceof CharSequence ? v.toString() : v
    if (v instanceof Map) return v.collectEntries { k, x -> [(k.toString()): plain(x)] }
    if (v instanceof Collection) return v.collect { plain(it) }
    return v.toString()
}

// One task of a label as the engine configures it: process-level settings, then the label's
def task = { Map cfg, String label, Map params ->
    Map proc = cfg.process as Map
    Map settings = proc.findAll { k, v -> !k.toString().startsWith('with') }
    settings.putAll((proc["withLabel:${label}".toString()] ?: [:]) as Map)
    def tc = new TaskConfig(settings)
    tc.put('attempt', 1)
    tc.setContext([params: params, task: tc])
    def run = new TaskRun(name: "${label} (1)", workDir: Paths.get('/work/xx/0123'), config: tc)
    def out = [maxForks: settings.maxForks, cpus: tc.cpus, memory: tc.memory?.toBytes(), time: tc.time?.toMillis(),
               queue: tc.queue, clusterOptions: tc.clusterOptionsAsString, containerOptions: tc.containerOptions]
    if (settings.executor == 'slurm') {
        def ex = new SlurmExecutor(); ex.session = new Session(cfg)
        out.sbatch = ex.getHeaders(run).readLines()*.trim().findAll { it.startsWith('#SBATCH') }
    }
    out
}

def os = ManagementFactory.operatingSystemMXBean as com.sun.management.OperatingSystemMXBean
def result = [machine: [cpus: Runtime.runtime.availableProcessors(), memory: os.totalMemorySize], variants: [:]]
input.variants.each { String name, Map v ->
    def cmd = new CmdRun(profile: v.profile)
    cmd.params = v.params
    def cfg = new ConfigBuilder().setOptions(new CliOptions()).setCmdRun(cmd).setBaseDir(root).setCurrentDir(root)
        .setUserConfigFiles(v.configs.collect { Paths.get(it) }).build()
    def params = cfg.params as Map
    def limits = (cfg.process as Map).resourceLimits as Map
    def executor = (cfg.executor ?: [:]) as Map
    def session = new Session(cfg)
    def checked = new LinkedHashMap(params); checked.putAll(input.required)
    result.variants[name] = [
        params        : plain(params),
        resourceLimits: [cpus: limits.cpus as int, memory: new nextflow.util.MemoryUnit(limits.memory.toString()).toBytes(),
                         time: new nextflow.util.Duration(limits.time.toString()).toMillis()],
        executor      : [name: executor.name] + (executor.name == 'local' ?
                         [cpus: LocalPollingMonitor.configCpus(session, 'local'), memory: LocalPollingMonitor.configMem(session, 'local')] : [:]),
        beforeScript  : (cfg.process as Map).beforeScript instanceof Closure ? 'venv' : plain((cfg.process as Map).beforeScript),
        gpu           : task(cfg, 'process_gpu', params),
        cpu           : task(cfg, 'process_medium', params),
        errors        : schema.validate(checked).errors,
    ]
}
println 'LAYERWISE-PROFILES ' + JsonOutput.toJson(result)
"""


@pytest.fixture(scope="module")
def resolved(tmp_path_factory) -> dict:
    """{'machine': the JVM's processors and memory, 'variants': {name: resolved settings}} in one JVM."""
    tmp = tmp_path_factory.mktemp("profiles")
    sheet = tmp / "samples.csv"
    sheet.write_text("sample_id,image,gender,caption_english\n")
    spec = {"root": str(ROOT), "schema": str(SCHEMA), "required": {"input": str(sheet), "outdir": str(tmp / "results")},
            "variants": {name: {"profile": p, "params": params, "configs": configs}
                         for name, (p, params, configs) in VARIANTS.items()}}
    (tmp / "variants.json").write_text(json.dumps(spec))
    (tmp / "resolve.groovy").write_text(GROOVY)
    # ROOT/lib as argument 0 (groovy_command), the variants as argument 1; launched from tmp (Session's side files)
    cmd = groovy_command(tmp / "resolve.groovy", tmp / "variants.json")
    run = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=240, env=nextflow_env())
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith("LAYERWISE-PROFILES ")), None)
    assert run.returncode == 0 and line, f"{' '.join(cmd)} (exit {run.returncode}):\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    return json.loads(line.split(" ", 1)[1])


@pytest.fixture(scope="module")
def variants(resolved) -> dict[str, dict]:
    return resolved["variants"]


# -- -profile local ------------------------------------------------------------------------------------
def test_local_is_sized_from_the_machine(resolved, variants):
    machine, v = resolved["machine"], variants["local"]
    # the JVM's view (processors and physical memory of the container or cgroup it runs in) is plausible
    assert 1 <= machine["cpus"] <= (os.cpu_count() or machine["cpus"])
    assert 0 < machine["memory"] <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    memory = max(1, machine["memory"] // GIB) * GIB            # whole GB, rounded down
    assert v["params"]["max_cpus"] == machine["cpus"]
    assert v["resourceLimits"]["cpus"] == machine["cpus"] and v["resourceLimits"]["memory"] == memory
    assert v["resourceLimits"]["time"] == 240 * 3600 * 1000     # --max_time's default
    assert v["executor"] == {"name": "local", "cpus": machine["cpus"], "memory": memory}
    assert v["errors"] == [], "the head's parameter check refuses -profile local's own params"


def test_local_runs_gpu_tasks_one_at_a_time_with_the_real_model(variants):
    v = variants["local"]
    p = v["params"]
    assert (p["model"], p["device"], p["sae_device"]) == ("google/gemma-3-4b-it", "cuda", "cuda")
    assert v["gpu"]["maxForks"] == 1 and v["cpu"]["maxForks"] is None
    # the label keeps conf/base.config's resources (a withLabel block in a profile would replace them)
    limits = v["resourceLimits"]
    assert v["gpu"]["cpus"] == min(4, limits["cpus"]) and v["gpu"]["memory"] == min(32 * GIB, limits["memory"])
    assert v["beforeScript"] == "venv", "venv mode (conf/venv.config) without a container profile"
    assert v["gpu"]["clusterOptions"] is None and "sbatch" not in v["gpu"]


def test_local_caps_follow_the_command_line(variants):
    v = variants["local_caps"]
    assert v["resourceLimits"]["cpus"] == 3 and v["resourceLimits"]["memory"] == 100 * GIB
    assert v["executor"] == {"name": "local", "cpus": 3, "memory": 100 * GIB}
    assert v["gpu"]["cpus"] == 3, "the GPU label's 4 CPUs are capped at --max_cpus 3"
    assert v["gpu"]["memory"] == 32 * GIB and v["errors"] == []


def test_local_with_a_container_keeps_one_gpu_task_at_a_time(variants):
    v = variants["local_docker"]
    assert v["gpu"]["maxForks"] == 1 and v["gpu"]["containerOptions"] == "--gpus all"
    limits = v["resourceLimits"]
    assert v["gpu"]["cpus"] == min(4, limits["cpus"]) and v["gpu"]["memory"] == min(32 * GIB, limits["memory"])
    assert v["beforeScript"] == "", "the container replaces the venv activation"


# -- -profile slurm ------------------------------------------------------------------------------------
def test_slurm_gpu_job_gets_type_qos_account_and_extra_options(variants):
    v = variants["slurm"]
    gpu, cpu = v["gpu"], v["cpu"]
    assert gpu["clusterOptions"] == "--gres=gpu:h100:1 --account=proj --qos=high --constraint=ib"
    assert "#SBATCH -p gpu-h100" in gpu["sbatch"]
    assert "#SBATCH --gres=gpu:h100:1 --account=proj --qos=high --constraint=ib" in gpu["sbatch"], gpu["sbatch"]
    # every other job: the account, QOS and extra options, no GPU, the cluster's default partition
    assert cpu["clusterOptions"] == "--account=proj --qos=high --constraint=ib"
    assert not any("--gres" in ln or ln.startswith("#SBATCH -p") for ln in cpu["sbatch"]), cpu["sbatch"]
    assert (gpu["cpus"], gpu["memory"], gpu["time"]) == (16, 64 * GIB, 6 * 3600 * 1000)
    assert v["params"]["device"] == "cuda" and v["beforeScript"] == "venv" and v["errors"] == []


def test_slurm_defaults_ask_for_any_gpu_on_the_default_partition(variants):
    v = variants["slurm_defaults"]
    assert v["gpu"]["clusterOptions"] == "--gres=gpu:1" and v["cpu"]["clusterOptions"] == ""
    assert v["gpu"]["queue"] is None and not any(ln.startswith("#SBATCH -p") for ln in v["gpu"]["sbatch"])
    assert v["resourceLimits"]["cpus"] == 16 and v["resourceLimits"]["memory"] == 128 * GIB


def test_gpu_gres_replaces_the_gpu_type(variants):
    v = variants["slurm_gres"]
    assert v["gpu"]["clusterOptions"] == "--gres=gpu:1g.10gb:1"
    assert "#SBATCH --gres=gpu:1g.10gb:1" in v["gpu"]["sbatch"] and v["errors"] == []


def test_the_schema_takes_any_gpu_type_name_but_no_extra_words(variants):
    assert variants["slurm_h200"]["errors"] == []
    assert variants["slurm_h200"]["gpu"]["clusterOptions"] == "--gres=gpu:h200:1"
    errors = variants["slurm_bad"]["errors"]
    assert len(errors) == 3, errors
    for name in ("--gpu_type", "--gpu_gres", "--slurm_qos"):
        assert any(e.startswith(name + ":") for e in errors), (name, errors)


# -- -profile ncc: slurm with Durham NCC's defaults -----------------------------------------------------
def test_ncc_keeps_the_a100_on_partition_gpu(variants):
    v = variants["ncc"]
    gpu, cpu, p = v["gpu"], v["cpu"], v["params"]
    assert (p["gpu_partition"], p["cpu_partition"], p["gpu_type"], p["modules"]) == ("gpu", "cpu", "a100",
                                                                                     "python/3.11 cuda/12.1")
    assert "#SBATCH -p gpu" in gpu["sbatch"] and "#SBATCH --gres=gpu:a100:1" in gpu["sbatch"], gpu["sbatch"]
    assert "#SBATCH -p cpu" in cpu["sbatch"] and not any("--gres" in ln for ln in cpu["sbatch"]), cpu["sbatch"]
    assert (gpu["cpus"], gpu["memory"], gpu["time"]) == (16, 64 * GIB, 6 * 3600 * 1000)
    assert v["resourceLimits"] == {"cpus": 32, "memory": 256 * GIB, "time": 48 * 3600 * 1000}
    assert v["errors"] == []


def test_ncc_caps_and_gpu_type_follow_the_command_line(variants):
    v = variants["ncc_caps"]
    assert v["resourceLimits"]["memory"] == 100 * GIB
    assert v["gpu"]["memory"] == 100 * GIB, "--gpu_memory 300 GB is capped at --max_memory"
    assert "#SBATCH --gres=gpu:h100:1" in v["gpu"]["sbatch"] and "#SBATCH -p gpu" in v["gpu"]["sbatch"]


def test_the_local_slurm_overlay_keeps_ncc_scheduling_within_the_node(variants):
    """conf/slurm_local.config (CI's cluster): the GPU job header tests/integration/test_slurm.py checks at run time."""
    v = variants["ncc_slurm_local"]
    assert "#SBATCH -p gpu" in v["gpu"]["sbatch"] and "#SBATCH --gres=gpu:a100:1" in v["gpu"]["sbatch"]
    assert "#SBATCH -p cpu" in v["cpu"]["sbatch"]
    assert v["resourceLimits"] == {"cpus": 2, "memory": 4 * GIB, "time": 3600 * 1000}
    assert (v["gpu"]["cpus"], v["gpu"]["memory"]) == (1, 2 * GIB) and v["params"]["device"] == "auto"


def test_cluster_options_without_equals_sign_is_refused_before_any_job(variants):
    errors = variants["slurm_no_equals"]["errors"]
    assert any(e.startswith("--cluster_options needs a value") for e in errors), errors
    assert any(e.startswith("Unknown parameter --constraint") for e in errors), errors


@pytest.mark.parametrize("name", ["local", "local_caps", "slurm", "slurm_gres", "slurm_h200", "ncc"])
def test_resolved_params_validate_against_the_schema(variants, name):
    """As tests/unit/test_conventions.py checks every `nextflow config` profile (a standard JSON-schema validator)."""
    values = {k: v for k, v in variants[name]["params"].items() if v is not None}
    for k, v in COMMAND_LINE.items():
        values.setdefault(k, v)
    errors = [f"params.{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in _schema_validator().iter_errors(values)]
    assert not errors, errors
