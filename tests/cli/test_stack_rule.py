"""The ``stack`` rule on a fixture workspace: ``pbuild build`` of a stack builds its images (cached as
any build), its StackInfo holds nothing absolute and becomes an absolute spec once built, an
edited env file changes exactly that service's config hash, and every bad input exits 2 with
file:line, the target and no traceback."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from pbuild.engine.analysis import Analyzer
from pbuild.engine.api import BuiltTarget
from pbuild.engine.labels import Label
from pbuild.engine.loading import Loader
from pbuild.engine.ruleset import RuleSet
from pbuild.engine.workspace import find_workspace
from pbuild.rules.stack.providers import StackInfo, built_spec
from pbuild.tools.stack.spec import Dependency, PortSpec, StackSpec, VolumeSpec, config_hash, to_json

from tests.support.runner import Runner, WorkspaceFactory, assert_user_error

STACK_BUILD = """\
[files]
rule = "layer"
srcs = ["hello.txt"]
prefix = "/srv"

[backend_image]
rule = "image"
layers = [":files"]
cmd = ["/bin/cat", "/srv/hello.txt"]

[frontend_image]
rule = "image"
layers = [":files"]
cmd = ["/bin/true"]

[web]
rule = "stack"

[web.services.backend]
image = ":backend_image"
env_file = "backend.env"
environment = { PORT = "8080" }
healthcheck = { test = ["/usr/bin/python3", "-c", "..."], interval = "1s", retries = 30 }

[web.services.frontend]
image = ":frontend_image"
ports = ["127.0.0.1:18080:8080"]
environment = { BACKEND_URL = "http://backend:8080/" }
depends_on = { backend = { condition = "service_healthy" } }
volumes = ["./static:/srv/static:ro", "cache:/var/cache/app"]
restart = "on-failure"
"""
LINE = {text: number for number, text in enumerate(STACK_BUILD.splitlines(), start=1)}


def stack_workspace(workspace: WorkspaceFactory, build: str = STACK_BUILD) -> Path:
    return workspace({"app/BUILD.toml": build, "app/hello.txt": "hello\n", "app/backend.env": "SECRET=s3\nPORT=1\n",
                      "app/static/index.html": "<p>hi</p>\n"})


def analyzed_stack(root: Path) -> BuiltTarget:
    """The stack target as ``pbuild up`` gets it from ``build_one`` (analysis in this process; the
    files were built by the real CLI before)."""
    workspace = find_workspace(str(root))
    analyzer = Analyzer(Loader(workspace, RuleSet(workspace)), workspace.config)
    label = Label("app", "web")
    graph = analyzer.analyze([label])
    return BuiltTarget(label, "stack", graph.targets[label].as_target(), workspace.root)


def test_a_stack_builds_its_images_and_becomes_an_absolute_spec(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    ws = stack_workspace(workspace)
    first = pbuild("build", "//app:web", cwd=ws)
    assert first.code == 0, str(first)
    assert first.summary.startswith("3 actions: 3 executed"), first.summary  # the layer and both images
    for image in ("backend_image", "frontend_image"):
        assert (ws / f"pbuild-out/app/{image}/oci/index.json").is_file()
        assert (ws / f"pbuild-out/app/{image}/digest").read_text().startswith("sha256:")
    again = pbuild("build", "//app:web", cwd=ws)
    assert again.code == 0 and again.summary.startswith("3 actions: 3 cached"), str(again)

    built = analyzed_stack(ws)
    info = built.providers[StackInfo]
    assert pickle.loads(pickle.dumps(info)) == info  # the analysis cache keeps providers
    assert str(ws) not in to_json(info.spec).decode() and info.spec.origin == "//app:web"
    assert info.spec.service("backend").image == "oci:pbuild-out/app/backend_image/oci"
    assert {f.path for f in built.providers.files} == {
        f"pbuild-out/app/{i}/{f}" for i in ("backend_image", "frontend_image") for f in ("oci", "digest")}
    for path in (ws / "pbuild-out").rglob("*"):
        if path.is_file():
            assert str(ws).encode() not in path.read_bytes(), path

    spec = built_spec(built)
    assert isinstance(spec, StackSpec) and spec.name == "web"
    root = str(ws.resolve())
    backend, frontend = spec.services
    assert backend.image == f"oci:{root}/pbuild-out/app/backend_image/oci"
    assert backend.image_digest == (ws / "pbuild-out/app/backend_image/digest").read_text().strip()
    assert frontend.image_digest == (ws / "pbuild-out/app/frontend_image/digest").read_text().strip()
    assert backend.environment == (("PORT", "8080"), ("SECRET", "s3"))  # environment wins over env_file
    assert backend.healthcheck is not None and backend.healthcheck.interval_s == 1.0
    assert backend.healthcheck.retries == 30
    assert frontend.ports == (PortSpec("127.0.0.1", 18080, 8080),)
    assert frontend.volumes == (VolumeSpec("bind", f"{root}/app/static", "/srv/static", True),
                                VolumeSpec("volume", "cache", "/var/cache/app"))
    assert frontend.depends_on == (Dependency("backend", "service_healthy"),)
    assert frontend.restart == "on-failure"


def test_an_edited_env_file_changes_that_service_only(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    ws = stack_workspace(workspace)
    assert pbuild("build", "//app:web", cwd=ws).code == 0
    before = {s.name: config_hash(s) for s in built_spec(analyzed_stack(ws)).services}
    (ws / "app/backend.env").write_text("SECRET=rotated\n")
    result = pbuild("build", "//app:web", cwd=ws)
    assert result.code == 0 and "executed" not in result.summary, str(result)  # no image is rebuilt
    after = {s.name: config_hash(s) for s in built_spec(analyzed_stack(ws)).services}
    assert after["frontend"] == before["frontend"]
    assert after["backend"] != before["backend"]


def test_a_changed_image_changes_that_services_digest(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    ws = stack_workspace(workspace)
    assert pbuild("build", "//app:web", cwd=ws).code == 0
    before = {s.name: config_hash(s) for s in built_spec(analyzed_stack(ws)).services}
    (ws / "app/BUILD.toml").write_text(STACK_BUILD.replace('cmd = ["/bin/true"]', 'cmd = ["/bin/false"]'))
    assert pbuild("build", "//app:web", cwd=ws).code == 0
    after = {s.name: config_hash(s) for s in built_spec(analyzed_stack(ws)).services}
    assert after["backend"] == before["backend"] and after["frontend"] != before["frontend"]


def edit(old: str, new: str) -> str:
    assert old in STACK_BUILD
    return STACK_BUILD.replace(old, new, 1)


BACKEND_IMAGE = LINE['image = ":backend_image"']
FRONTEND_DEPENDS = LINE['depends_on = { backend = { condition = "service_healthy" } }']
BAD = [
    (edit('image = ":backend_image"\n', 'image = ":backend_image"\ndepends_on = ["frontend"]\n'),
     BACKEND_IMAGE + 1, "cycle: backend -> frontend -> backend"),
    (edit('image = ":backend_image"\n', 'image = ":backend_image"\ndepends_on = ["db"]\n'),
     BACKEND_IMAGE + 1, "service 'backend' depends on 'db', which the stack does not have"),
    (edit('depends_on = { backend = { condition = "service_healthy" } }',
          'depends_on = { backend = { condition = "service_ready" } }'),
     FRONTEND_DEPENDS, "unknown condition 'service_ready'"),
    (edit("18080:8080", "18080:80800"), LINE['ports = ["127.0.0.1:18080:8080"]'], "'80800' is not a port number"),
    (edit('interval = "1s"', 'interval = "1x"'), LINE['env_file = "backend.env"'] + 2,
     "'services.backend.healthcheck.interval': '1x' is not a duration"),
    (edit('restart = "on-failure"', 'restart = "sometimes"'), LINE['restart = "on-failure"'],
     "unknown restart policy 'sometimes'"),
    (edit('image = ":backend_image"\n', 'image = ":backend_image"\nhostname = "b"\n'), BACKEND_IMAGE + 1,
     "unknown key 'hostname'"),
    (edit('image = ":backend_image"', 'image = ":nosuch"'), BACKEND_IMAGE, "no target 'nosuch' in //app"),
    (edit('image = ":backend_image"', 'image = ":files"'), BACKEND_IMAGE, "(a layer) does not provide ImageInfo"),
    (edit('image = ":backend_image"', 'image = "backend_image"'), BACKEND_IMAGE, "must be a label"),
    (edit('image = ":backend_image"\n', ""), LINE["[web.services.backend]"], "service 'backend' names no image"),
    (edit("./static:", "../../static:"), LINE['volumes = ["./static:/srv/static:ro", "cache:/var/cache/app"]'],
     "leads outside the workspace"),
    (edit("./static:", "/etc:"), LINE['volumes = ["./static:/srv/static:ro", "cache:/var/cache/app"]'], "is absolute"),
    (edit('env_file = "backend.env"', 'env_file = "missing.env"'), LINE['env_file = "backend.env"'],
     "env file app/missing.env does not exist"),
    (edit('environment = { PORT = "8080" }', "environment = { PORT = true }"), LINE['environment = { PORT = "8080" }'],
     "is not a string or number"),
    (edit('rule = "stack"', 'rule = "stack"\nproject_name = "Web App"'), LINE['rule = "stack"'] + 1,
     "'project_name': 'Web App' is not valid"),
    (edit('ports = ["127.0.0.1:18080:8080"]', 'ports = ["127.0.0.1:18080:8080"]\nworking_dir = 5'),
     LINE['ports = ["127.0.0.1:18080:8080"]'] + 1, "must be a non-empty string"),
    (STACK_BUILD.split("[web]")[0] + '[web]\nrule = "stack"\nservices = {}\n', None, "a stack needs at least one service"),
    (STACK_BUILD + '\n[web.services.extra]\nimage = ":backend_image"\nports = ["127.0.0.1:18080:1"]\n', None,
     "publishes 127.0.0.1:18080/tcp, which service 'frontend' publishes already"),
]


@pytest.mark.parametrize(("build", "line", "says"), BAD, ids=[b[2][:40] for b in BAD])
def test_bad_input_exits_2_with_file_line_and_target(workspace: WorkspaceFactory, pbuild: Runner,
                                                      build: str, line: int | None, says: str) -> None:
    ws = stack_workspace(workspace, build)
    result = pbuild("build", "//app:web", cwd=ws)
    where = f"app/BUILD.toml:{line}: " if line else "app/BUILD.toml:"
    assert_user_error(result, 2, where, "target //app:web", says)


def test_a_service_that_is_not_a_table(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    ws = stack_workspace(workspace, STACK_BUILD.split("[web]")[0] + '[web]\nrule = "stack"\nservices = { a = "nginx" }\n')
    assert_user_error(pbuild("build", "//app:web", cwd=ws), 2, "app/BUILD.toml:", "'a' must be a table")


def test_the_project_name_defaults_to_the_target_name(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    ws = stack_workspace(workspace, STACK_BUILD.replace("[web", "[Web_Stack"))
    workspace_root = find_workspace(str(ws))
    analyzer = Analyzer(Loader(workspace_root, RuleSet(workspace_root)), workspace_root.config)
    label = Label("app", "Web_Stack")
    info = analyzer.analyze([label]).targets[label].as_target()[StackInfo]
    assert info.spec.name == "web_stack"
    bad = stack_workspace(workspace, STACK_BUILD.replace("[web", "[_web"))
    assert_user_error(pbuild("build", "//app:_web", cwd=bad), 2, "cannot name the stack", "project_name")


# What `pbuild up` does (``CommandContext.build_one``): a real build through the engine, whose
# analysis cache saves StackInfo and brings it back, in a process of its own.
BUILD_ONE = """
import sys
from pbuild.engine.api import BuiltTarget
from pbuild.engine.build import BuildRequest, build
from pbuild.rules.stack.providers import built_spec
from pbuild.tools.stack.spec import to_json

ws, cache = sys.argv[1:3]
_, analyzed, _ = build(BuildRequest(["//app:web"], cwd=ws, cache_dir=cache, quiet=True))
label = analyzed.labels[0]
built = BuiltTarget(label, analyzed.rule_names[label], analyzed.targets[label], ws)
sys.stdout.write(to_json(built_spec(built)).decode())
"""


def test_the_analysis_cache_keeps_the_stack_and_notices_an_env_file(workspace: WorkspaceFactory, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from tests.support.runner import base_env

    ws = stack_workspace(workspace)
    cache = tmp_path / "cache"

    def build_one() -> dict[str, object]:
        done = subprocess.run([sys.executable, "-c", BUILD_ONE, str(ws), str(cache)], capture_output=True, text=True,
                              env=base_env(tmp_path), cwd=ws)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    first = build_one()
    saved = list(cache.rglob("*.analysis"))
    assert len(saved) == 1
    mtime = saved[0].stat().st_mtime_ns
    assert build_one() == first  # from the saved analysis
    assert saved[0].stat().st_mtime_ns == mtime, "the second build re-analyzed"
    (ws / "app/backend.env").write_text("SECRET=rotated\n")
    env = build_one()["services"][0]["environment"]  # type: ignore[index]
    assert env == [["PORT", "8080"], ["SECRET", "rotated"]]


def test_query_sees_the_services_images(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    ws = stack_workspace(workspace)
    result = pbuild("query", "deps(//app:web)", cwd=ws)
    assert result.code == 0, str(result)
    assert result.out.split() == ["//app:backend_image", "//app:files", "//app:frontend_image", "//app:web"]
    result = pbuild("query", "rdeps(//..., //app:frontend_image)", cwd=ws)
    assert result.out.split() == ["//app:frontend_image", "//app:web"], str(result)


def test_an_unprivileged_user_builds_a_stack(nobody_dir: Path) -> None:
    from tests.support.runner import SETPRIV_NOBODY, chown_tree, write_tree

    ws = nobody_dir / "ws"
    write_tree(ws, {"WORKSPACE.toml": '[workspace]\nname = "fixture"\n', "app/BUILD.toml": STACK_BUILD,
                    "app/hello.txt": "hello\n", "app/backend.env": "SECRET=s3\n", "app/static/index.html": "hi\n"})
    chown_tree(nobody_dir, 65534, 65534)
    runner = Runner(nobody_dir)
    env = {"HOME": str(nobody_dir), "XDG_CONFIG_HOME": str(nobody_dir / "config")}
    result = runner("build", "//app:web", cwd=ws, cache=nobody_dir / "cache", env=env, prefix=SETPRIV_NOBODY)
    assert result.code == 0 and result.summary.startswith("3 actions: 3 executed"), str(result)
    assert (ws / "pbuild-out/app/backend_image/digest").stat().st_uid == 65534
    (ws / "app/BUILD.toml").write_text(edit("18080:8080", "18080:0"))
    result = runner("build", "//app:web", cwd=ws, cache=nobody_dir / "cache", env=env, prefix=SETPRIV_NOBODY)
    ports_line = LINE['ports = ["127.0.0.1:18080:8080"]']
    assert_user_error(result, 2, f"app/BUILD.toml:{ports_line}: ", "'0' is not a port")
