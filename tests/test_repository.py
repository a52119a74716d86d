"""The repository's own rules (../shared/DESIGN.md), checked on every run."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from conftest import ROOT, ServerProcess, run_script

CONCEPTS = [
    "Threading",
    "BlockingQueue",
    "WebSockets",
    "RealTimeChat",
    "TwoPhaseCommit",
    "UniqueIdGeneration",
    "SimpleCDN",
    "ConsistentHashing",
]
TEST_MODULE = {c: f"test_{c.lower()}.py" for c in CONCEPTS} | {
    "UniqueIdGeneration": "test_uniqueid.py"
}
ENTRY_POINTS = {"demo", "bench"}  # every folder has them; nothing imports them
SKIP_DIRS = {"__pycache__", "node_modules", ".venv", "images"}


def present_concepts() -> list[str]:
    return [c for c in CONCEPTS if (ROOT / c).is_dir()]


def python_files(folder: str) -> list[Path]:
    return [p for p in sorted((ROOT / folder).rglob("*.py")) if not SKIP_DIRS & set(p.parts)]


def module_names(folder: str) -> set[str]:
    """Importable names a folder defines: its .py modules and its packages."""
    base = ROOT / folder
    names = {p.stem for p in base.glob("*.py")}
    names |= {p.name for p in base.iterdir() if (p / "__init__.py").is_file()}
    return names


def imported_names(path: Path) -> set[str]:
    """Top-level names a file imports (`import a.b` and `from a import b` give `a`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_folder_imports_another_folders_modules():
    owners: dict[str, str] = {}
    for folder in present_concepts():
        for name in module_names(folder) - ENTRY_POINTS:
            owners[name] = folder
    crossings = []
    for folder in present_concepts():
        own = module_names(folder)  # BlockingQueue/ may import its own BlockingQueue.py
        for path in python_files(folder):
            for name in imported_names(path):
                owner = owners.get(name)
                if (name in CONCEPTS and name not in own) or (owner and owner != folder):
                    crossings.append(f"{path.relative_to(ROOT)} imports {name} ({owner or name})")
    assert not crossings, "folders must share no code:\n" + "\n".join(crossings)


def loaded_entry_points(path: Path) -> set[str]:
    """Entry points a test loads through `load_module(folder, "bench")`: every folder
    has a bench.py, so which one such a call gets depends on what ran before."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return {
        node.args[1].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", None) == "load_module"
        and len(node.args) == 2
        and isinstance(node.args[1], ast.Constant)
        and node.args[1].value in ENTRY_POINTS
    }


def test_nothing_imports_the_entry_points():
    offenders = [
        str(path.relative_to(ROOT))
        for folder in present_concepts()
        for path in python_files(folder)
        if imported_names(path) & ENTRY_POINTS
    ]
    offenders += [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "tests").glob("*.py"))
        if imported_names(path) & ENTRY_POINTS or loaded_entry_points(path)
    ]
    assert not offenders, f"demo.py and bench.py are entry points, never imported: {offenders}"


def test_module_names_are_unique_across_folders():
    seen: dict[str, str] = {}
    clashes = []
    for folder in present_concepts():
        for name in sorted(module_names(folder) - ENTRY_POINTS):
            if name in seen:
                clashes.append(f"{name}: {seen[name]}/ and {folder}/")
            seen[name] = folder
    assert not clashes, "module names must be unique across the repository: " + "; ".join(clashes)


@pytest.mark.parametrize("folder", CONCEPTS)
def test_each_built_folder_keeps_the_contract(folder):
    if not (ROOT / folder).is_dir():
        pytest.skip(f"{folder}/ is not built yet")
    missing = [f for f in ("README.md", "demo.py") if not (ROOT / folder / f).is_file()]
    if not (ROOT / "tests" / TEST_MODULE[folder]).is_file():
        missing.append(f"tests/{TEST_MODULE[folder]}")
    assert not missing, f"{folder}/ lacks {', '.join(missing)}"


def first_code_block(markdown: str) -> list[str]:
    match = re.search(r"```[a-z]*\n(.*?)```", markdown, re.DOTALL)
    assert match, "README.md has no code block"
    return [line.strip() for line in match.group(1).splitlines() if line.strip()]


def make_targets() -> set[str]:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z][\w-]*)\s*:", makefile, re.MULTILINE))


def test_readme_starts_with_the_two_commands_and_they_are_make_targets():
    commands = first_code_block((ROOT / "README.md").read_text(encoding="utf-8"))
    assert commands[:2] == ["make demo", "make test"]
    for command in commands[:2]:
        target = command.split()[1]
        assert target in make_targets()
        dry_run = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
        assert dry_run.returncode == 0, dry_run.stderr


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "set -euo pipefail" in ci
    assert re.search(r"^make test$", ci, re.MULTILINE)


def test_requirements_are_exact_pins():
    lines = [
        line.strip()
        for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    loose = [line for line in lines if not re.fullmatch(r"[A-Za-z0-9_.\-\[\],]+==[\w.+-]+", line)]
    assert lines and not loose, f"not pinned with ==: {loose}"


def test_tour_lists_every_concept_in_readme_order():
    result = run_script("tour.py", "--list")
    assert result.returncode == 0, result.stderr
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    assert listed == CONCEPTS


def test_tour_refuses_an_unknown_concept():
    result = run_script("tour.py", "NoSuchConcept")
    assert result.returncode == 2
    assert "unknown concept NoSuchConcept" in result.stderr


# The harness itself: a server that announces itself is started, reached and
# stopped; one that dies or stays silent is reported with what it printed.

TINY_SERVER = """
import argparse, http.server, signal, sys
parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, default=0)
args = parser.parse_args()
server = http.server.HTTPServer(("127.0.0.1", args.port), http.server.SimpleHTTPRequestHandler)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print(f"Listening on http://127.0.0.1:{server.server_port}", flush=True)
server.serve_forever()
"""


def test_harness_starts_reaches_and_stops_a_server(tmp_path, start_server):
    script = tmp_path / "tiny_server.py"
    script.write_text(TINY_SERVER)
    server = start_server(str(script))
    assert server.port > 0
    assert requests.get(server.url + "/", timeout=5).status_code == 200
    assert server.stop() == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url + "/", timeout=5)


def test_harness_reports_a_server_that_dies_at_start(tmp_path):
    script = tmp_path / "broken_server.py"
    script.write_text("import sys\nprint('cannot bind', flush=True)\nsys.exit(3)\n")
    with pytest.raises(RuntimeError, match=r"exited with 3(.|\n)*cannot bind"):
        ServerProcess(str(script))


def test_harness_gives_up_on_a_silent_server(tmp_path):
    script = tmp_path / "silent_server.py"
    script.write_text("import time\ntime.sleep(60)\n")
    with pytest.raises(RuntimeError, match="printed no 'Listening on ' line"):
        ServerProcess(str(script), timeout=1.0)


def test_run_script_captures_a_scripts_output():
    result = run_script("tour.py", "--help")
    assert result.returncode == 0
    assert "usage: tour.py" in result.stdout


# The real engines the concept tests use: each starts privately, serves, survives
# (or, without persistence, forgets on) a crash as the real engine does, and stops.


def test_harness_redis_forgets_on_a_crash_without_persistence(redis_server):
    redis = redis_server()
    redis.client().set("greeting", "hello")
    assert redis.client().get("greeting") == b"hello"
    redis.kill()
    redis.start()  # same port, same (empty) directory
    assert redis.client().get("greeting") is None


def test_harness_redis_cluster_spreads_keys_over_its_masters(redis_cluster):
    from redis.cluster import ClusterNode, RedisCluster

    cluster = redis_cluster(masters=3)
    client = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in cluster.startup_nodes])
    for n in range(100):
        client.set(f"key:{n}", n)
    assert [int(client.get(f"key:{n}")) for n in range(100)] == list(range(100))
    counts = [node.client().dbsize() for node in cluster.nodes]
    assert sum(counts) == 100 and all(counts), counts  # every master holds some
    spare = cluster.add_node()
    assert spare.client().dbsize() == 0
    client.close()


def test_harness_postgres_keeps_a_prepared_transaction_through_a_crash(postgres_server):
    with postgres_server.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE stock (item text PRIMARY KEY, left_ integer)")
        conn.execute("INSERT INTO stock VALUES ('pizza', 3)")
    with postgres_server.connect() as conn:
        conn.execute("UPDATE stock SET left_ = left_ - 1")
        conn.execute("PREPARE TRANSACTION 'order-1'")
    postgres_server.kill()  # SIGKILL between prepare and commit
    postgres_server.start()
    with postgres_server.connect(autocommit=True) as conn:
        prepared = conn.execute("SELECT gid FROM pg_prepared_xacts").fetchall()
        assert prepared == [("order-1",)]
        conn.execute("COMMIT PREPARED 'order-1'")
        assert conn.execute("SELECT left_ FROM stock").fetchone() == (2,)


def test_harness_etcd_keeps_a_key_through_a_crash_and_pauses(etcd_server):
    import base64

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    put = requests.post(
        etcd_server.url + "/v3/kv/put", json={"key": b64("worker/7"), "value": b64("me")}, timeout=5
    )
    assert put.status_code == 200, put.text
    etcd_server.kill()
    etcd_server.start()  # same data directory and ports
    got = requests.post(etcd_server.url + "/v3/kv/range", json={"key": b64("worker/7")}, timeout=5)
    assert base64.b64decode(got.json()["kvs"][0]["value"]) == b"me"
    etcd_server.pause()
    with pytest.raises(requests.Timeout):
        requests.get(etcd_server.url + "/health", timeout=0.5)
    etcd_server.resume()
    assert requests.get(etcd_server.url + "/health", timeout=5).json()["health"] == "true"


# The tour's two other modes: `make bench` reads each bench's verdict, and
# `make images` is the only run that may rewrite the READMEs' pictures.


def load_tour(monkeypatch, root: Path):
    """tour.py, imported with its concept folders (and summary file) under `root`."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tour", ROOT / "tour.py")
    tour = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "tour", tour)  # dataclasses look their module up there
    spec.loader.exec_module(tour)
    monkeypatch.setattr(tour, "ROOT", root)
    monkeypatch.setattr(tour, "BENCH_SUMMARY", root / "out" / "bench-summary.json")
    return tour


FAKE_BENCH = """
import sys
print("PASS  fast enough: 3.1x (target 2x)")
print("FAIL  small enough: 9 MB (target 5 MB)")
print("headline: 3.1x the peer's speed")
print("targets: {met} of 2 met")
sys.exit({code})
"""


def test_bench_mode_summarises_each_bench_and_fails_if_any_did(tmp_path, monkeypatch, capsys):
    for concept, met, code in (("Threading", 2, 0), ("BlockingQueue", 1, 1)):
        (tmp_path / concept).mkdir()
        (tmp_path / concept / "bench.py").write_text(FAKE_BENCH.format(met=met, code=code))
    (tmp_path / "WebSockets").mkdir()
    (tmp_path / "WebSockets" / "bench.py").write_text("print('no verdict')\n")  # exits 0
    tour = load_tour(monkeypatch, tmp_path)

    assert tour.main(["--bench", "Threading", "BlockingQueue", "WebSockets"]) == 1
    summary = json.loads((tmp_path / "out" / "bench-summary.json").read_text())
    by_folder = {b["concept"]: b for b in summary["benches"]}
    assert by_folder["Threading"]["status"] == "ok"
    assert (by_folder["Threading"]["targets_met"], by_folder["Threading"]["targets"]) == (2, 2)
    assert by_folder["Threading"]["summary"] == "3.1x the peer's speed"
    assert by_folder["BlockingQueue"]["status"] == "failed (exit 1)"
    assert by_folder["WebSockets"]["status"].startswith("failed (no 'targets")
    table = capsys.readouterr().out
    assert re.search(r"Threading\s+ok\s+[\d.]+\s+2 of 2\s+3\.1x the peer's speed", table)


def test_demo_mode_shows_the_lesson_or_what_was_seen_instead(tmp_path, monkeypatch, capsys):
    demos = {
        "Threading": "print('Lesson: 2 processes were 1.9x faster')",
        "BlockingQueue": "import sys\nprint('Lesson not shown: it grew to 51')\nsys.exit(1)",
    }
    for concept, source in demos.items():
        (tmp_path / concept).mkdir()
        (tmp_path / concept / "demo.py").write_text(source + "\n")
    tour = load_tour(monkeypatch, tmp_path)
    assert tour.main(["Threading", "BlockingQueue"]) == 1
    table = capsys.readouterr().out
    assert re.search(r"Threading\s+ok\s.*Lesson: 2 processes were 1\.9x faster", table)
    assert re.search(r"BlockingQueue\s+failed \(exit 1\).*Lesson not shown: it grew to 51", table)


def test_make_has_bench_and_images_targets():
    for target in ("bench", "images"):
        assert target in make_targets()
        dry_run = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
        assert dry_run.returncode == 0, dry_run.stderr
        assert "tour.py" in dry_run.stdout


def test_generated_outputs_are_git_ignored():
    paths = [f"{folder}/out/plot.png" for folder in CONCEPTS] + ["out/bench-summary.json"]
    checked = subprocess.run(
        ["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True
    )
    assert sorted(checked.stdout.split()) == sorted(paths)


def test_ci_fails_when_make_test_leaves_the_tree_changed():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    after_make_test = ci[ci.index("make test") :]
    assert "git status --porcelain" in after_make_test and "exit 1" in after_make_test


FAKE_DRAWER = """
import argparse, pathlib
parser = argparse.ArgumentParser()
parser.add_argument("--save-images", action="store_true")
args = parser.parse_args()
folder = "images" if args.save_images else "out"
path = pathlib.Path(__file__).parent / folder / "{name}.png"
path.parent.mkdir(exist_ok=True)
path.write_text("picture")
print("Lesson: drew {name}")
print("targets: 1 of 1 met")
"""


def test_images_mode_lets_demos_and_picture_drawing_benches_rewrite_images(tmp_path, monkeypatch):
    folder = tmp_path / "Threading"
    folder.mkdir()
    (folder / "demo.py").write_text(FAKE_DRAWER.format(name="demo"))
    (folder / "bench.py").write_text(FAKE_DRAWER.format(name="bench"))
    (tmp_path / "BlockingQueue").mkdir()  # a bench without --save-images is not run
    (tmp_path / "BlockingQueue" / "demo.py").write_text(FAKE_DRAWER.format(name="demo"))
    (tmp_path / "BlockingQueue" / "bench.py").write_text("import sys\nsys.exit(3)\n")
    tour = load_tour(monkeypatch, tmp_path)
    assert tour.main(["--save-images", "Threading", "BlockingQueue"]) == 0
    assert sorted(p.name for p in (folder / "images").iterdir()) == ["bench.png", "demo.png"]
    assert not (folder / "out").exists()
    assert [p.name for p in (tmp_path / "BlockingQueue" / "images").iterdir()] == ["demo.png"]


# Every folder keeps the outcome convention and leaves the tree clean
# (../shared/DESIGN.md, "The contract of a concept folder").


def git_status(*paths: str) -> str:
    return subprocess.run(
        ["git", "status", "--porcelain", "--", *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@pytest.mark.parametrize("folder", CONCEPTS)
def test_demo_and_bench_have_help_and_leave_the_tree_as_it_was(folder):
    before = git_status(folder)
    for script in ("demo.py", "bench.py"):
        result = run_script(f"{folder}/{script}", "--help", timeout=60)
        assert result.returncode == 0 and "usage:" in result.stdout, result.stderr
        if script == "demo.py" and (ROOT / folder / "images").is_dir():
            assert "--save-images" in result.stdout, f"{folder}/demo.py lacks --save-images"
    assert git_status(folder) == before


@pytest.mark.parametrize("folder", CONCEPTS)
def test_demo_and_bench_report_their_outcome_in_the_shared_words(folder):
    demo = (ROOT / folder / "demo.py").read_text(encoding="utf-8")
    assert "Lesson: " in demo and "Lesson not shown: " in demo
    bench = (ROOT / folder / "bench.py").read_text(encoding="utf-8")
    assert "headline: " in bench
    assert re.search(r"targets: \{[^}]+\} of \{[^}]+\} met", bench), "no 'targets: N of M met'"
