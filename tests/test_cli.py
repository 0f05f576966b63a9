import subprocess
import sys


def _kd3(*args):
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_help_lists_the_pool_commands():
    run = _kd3("--help")
    assert run.returncode == 0 and "pool" in run.stdout
    sub = _kd3("pool", "--help")
    assert "import" in sub.stdout and "info" in sub.stdout


def test_info_on_a_missing_pool_is_one_line(tmp_path):
    run = _kd3("pool", "info", str(tmp_path / "none"))
    assert run.returncode == 2
    assert run.stderr == f"kd3 pool: error: {tmp_path / 'none'}: no such pool directory\n"


HEAVY = ("torch", "numpy", "pyarrow", "PIL", "pydantic", "redis", "celery", "scrapy", "faiss")


def test_top_level_help_imports_no_stage():
    """`kd3 --help` must stay a bare Python start: no stage module, no heavy library."""
    code = (
        "import sys\n"
        "from workers.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[]"
    assert "distill" in run.stdout and "train-teacher" in run.stdout  # every command is listed


def _every_command():
    from workers.cli import COMMANDS, build_parser

    for name in COMMANDS:
        parser = build_parser(name)
        sub = next(a for a in parser._actions if a.dest == "command")
        yield from _leaves(name, sub.choices[name])


def _leaves(name, parser):
    """(name, parser) for a command and, for commands with their own subcommands, each of those."""
    subs = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    if not subs:
        yield name, parser
    for action in subs:
        for child, child_parser in action.choices.items():
            yield from _leaves(f"{name} {child}", child_parser)


def test_every_flag_has_help_and_every_command_an_example():
    missing = []
    for name, parser in _every_command():
        if "example" not in (parser.epilog or ""):
            missing.append(f"{name}: no example")
        for action in parser._actions:
            if action.dest == "help":
                continue
            if not (action.help or "").strip():
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}: no help")
    assert missing == []


def test_unreachable_redis_is_one_line(free_port_url):
    for args in (["jobs"], ["status", "nojob"], ["--redis", free_port_url, "cancel", "nojob"]):
        if "--redis" not in args:
            args = [*args, "--redis", free_port_url]
        run = _kd3(*args)
        assert run.returncode == 2, (args, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot reach Redis at" in lines[0], run.stderr


def test_bad_redis_url_is_one_line():
    run = _kd3("jobs", "--redis", "localhost:6379")
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "kd3 jobs: error: bad Redis URL 'localhost:6379': Redis URL must specify one of the "
        "following schemes (redis://, rediss://, unix://)"
    ]


def test_connection_flags_work_before_or_after_the_command():
    from workers.cli import build_parser

    url = "redis://127.0.0.1:6390/0"
    for argv in (
        ["submit", "distill", "--teacher", "t.pt", "--pool", "p", "--redis", url],
        ["submit", "--redis", url, "distill", "--teacher", "t.pt", "--pool", "p"],
        ["--redis", url, "submit", "distill", "--teacher", "t.pt", "--pool", "p"],
        ["jobs", "--redis", url],
        ["--redis", url, "jobs"],
        ["crawl", "--classes", "cat", "--out", "p", "--redis", url],
        ["--redis", url, "crawl", "--classes", "cat", "--out", "p"],
    ):
        assert (
            build_parser(argv[2] if argv[0] == "--redis" else argv[0]).parse_args(argv).redis == url
        )
