"""`softgate gates list | check | plot` through softgate.cli.main, and softgate.plots.plot_gates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from softgate import gates
from softgate.cli import main
from softgate.plots import gate_variants, plot_gates

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 10_000
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_list_shows_every_gate_alias_and_defaults(capsys) -> None:
    assert main(["gates", "list"]) == 0
    out = capsys.readouterr().out
    for name in gates.names():
        assert name in out
    assert "algebraic" in out and "tau_pos=10, tau_neg=12" in out and "eps_low=0.2, eps_high=0.2" in out
    assert "nu=" in out


def test_check_passes_for_sapo_and_prints_the_table(capsys) -> None:
    assert main(["gates", "check", "sigmoid", "--tau-pos", "10", "--tau-neg", "12"]) == 0
    out = capsys.readouterr().out
    assert "sigmoid(tau_pos=10, tau_neg=12): PASS" in out
    for number in ("1", "2", "3", "4"):
        assert f"\n  {number}  " in out
    assert "A>0" in out and "A<0" in out


def test_check_student_and_alias(capsys) -> None:
    assert main(["gates", "check", "student", "--nu", "0.5", "--tau", "5"]) == 0
    assert main(["gates", "check", "algebraic"]) == 0
    assert "softsign(" in capsys.readouterr().out


def test_check_exit_1_on_inadmissible_gates(capsys) -> None:
    assert main(["gates", "check", "identity"]) == 1
    assert "condition 4 fails (A>0)" in capsys.readouterr().out
    assert main(["gates", "check", "clip", "--eps-low", "0.2", "--eps-high", "0.28"]) == 1
    out = capsys.readouterr().out
    assert "f' jumps by 1 at x=1.28" in out and "f' jumps by 1 at x=0.8" in out
    assert main(["gates", "check", "clip", "--eps", "0.1"]) == 1
    assert "x=1.1" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["gates", "check", "sigmoid", "--nu", "3"], "unknown parameter 'nu' for gate 'sigmoid'; accepted parameters"),
    (["gates", "check", "sigmoid", "--tau-pos", "-1"], "tau_pos must be > 0"),
    (["gates", "check", "clip", "--eps", "-0.1"], "eps_low must be >= 0"),
    (["gates", "check", "student", "--nu", "0"], "nu must be > 0"),
    (["gates", "check", "erf", "--tau", "2", "--tau-pos", "3"], "either --tau or --tau-pos"),
    (["gates", "check", "clip", "--eps", "0.2", "--eps-high", "0.3"], "use either --eps or --eps-high, not both"),
    (["gates", "check", "student", "--nu", "2", "--param", "nu=3"], "use either --nu or --param"),
    (["gates", "check", "sigmoidd"], "unknown gate 'sigmoidd'; known gates: sigmoid, erf"),
    (["gates", "check", "erf", "--tau", "nan"], "must be finite"),
])
def test_check_exit_2_on_bad_parameters(capsys, argv: list[str], message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("softgate gates check: error:") and message in err


def test_unknown_gate_names_the_known_ones(capsys) -> None:
    assert main(["gates", "check", "sigmoidd"]) == 2
    err = capsys.readouterr().err
    for name in [*gates.names(), *gates.aliases()]:
        assert name in err
    assert main(["gates", "plot", "nope", "--out", "x.png"]) == 2
    assert "unknown gate 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("action", ["check", "plot"])
def test_help_does_not_import_torch_and_points_to_the_list(action: str) -> None:
    # `softgate gates check --help` must stay fast: names and parameters are validated by the registry in the
    # handler, and the help points to `softgate gates list`.
    import subprocess
    import sys

    code = ("import sys\n"
            "from softgate.cli import main\n"
            f"try:\n    main(['gates', {action!r}, '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True, text=True).stdout
    assert "softgate gates list" in out and "--param KEY=VALUE" in out


def test_param_flag_equals_the_named_flags(capsys) -> None:
    assert main(["gates", "check", "student", "--param", "nu=0.5", "--param", "tau_pos=5", "--tau-neg", "6"]) == 0
    by_param = capsys.readouterr().out
    assert main(["gates", "check", "student", "--nu", "0.5", "--tau-pos", "5", "--tau-neg", "6"]) == 0
    assert capsys.readouterr().out == by_param
    assert "student(tau_pos=5, tau_neg=6, nu=0.5): PASS" in by_param


@pytest.mark.parametrize("bad", ["nu", "nu=", "=3", "nu=x"])
def test_param_needs_key_equals_number(capsys, bad: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(["gates", "check", "student", "--param", bad])
    assert info.value.code == 2
    assert "--param expects KEY=VALUE with a number" in capsys.readouterr().err


def test_a_user_gates_own_parameter_on_the_command_line(tmp_path: Path, capsys) -> None:
    @gates.register("cli-pow")
    class PowTail(gates.Gate):
        """f' = (1 + |x - 1|)^-k."""

        param_defaults = {"k": 2.0}

        def _f(self, x, pos):
            u, k = x - 1, self.params["k"]
            return 1 + torch.sign(u) * ((1 + u.abs()) ** (1 - k) - 1) / (1 - k)

        def _df(self, x, pos):
            return (1 + (x - 1).abs()) ** -self.params["k"]

    try:
        assert main(["gates", "list"]) == 0
        assert "cli-pow   -          k=2" in capsys.readouterr().out
        assert main(["gates", "check", "cli-pow", "--param", "k=3"]) == 0
        assert "cli-pow(k=3): PASS" in capsys.readouterr().out
        # k = 1/2: x f'(x) ~ x^(1/2) grows, condition 4 fails
        assert main(["gates", "check", "cli-pow", "--param", "k=0.5"]) == 1
        assert "condition 4 fails (A>0)" in capsys.readouterr().out
        assert main(["gates", "plot", "cli-pow", "erf", "--param", "k=3", "--out", str(tmp_path / "p.png")]) == 0
        assert_png(tmp_path / "p.png")
        capsys.readouterr()
        assert main(["gates", "plot", "erf", "--param", "k=3", "--out", str(tmp_path / "q.png")]) == 2
        assert "no gate among erf takes k" in capsys.readouterr().err
    finally:
        gates.unregister("cli-pow")


def test_gates_without_action_prints_help(capsys) -> None:
    assert main(["gates"]) == 2
    assert "list" in capsys.readouterr().out


def test_plot_writes_a_png(tmp_path: Path, capsys) -> None:
    out = tmp_path / "figs" / "gates.png"  # parent directory created on demand
    assert main(["gates", "plot", "sigmoid", "erf", "clip", "--out", str(out), "--taus", "1,5,10"]) == 0
    assert_png(out)
    assert str(out) in capsys.readouterr().out
    neg = tmp_path / "neg.png"
    assert main(["gates", "plot", "student", "--out", str(neg), "--negative", "--x-max", "5"]) == 0
    assert_png(neg)


@pytest.mark.parametrize("taus", ["1,x", "0,5", "-1", ","])
def test_plot_rejects_bad_taus(tmp_path: Path, taus: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(["gates", "plot", "erf", "--out", str(tmp_path / "g.png"), "--taus", taus])
    assert info.value.code == 2
    assert not (tmp_path / "g.png").exists()


def test_plot_gates_function_with_objects_and_names(tmp_path: Path) -> None:
    user = gates.from_derivative(lambda x: 1 / (1 + (x - 1) ** 2) ** 2, name="user")
    path = plot_gates([gates.make("student", nu=1.5), "softsign", user], taus=(2.0, 8.0), out=tmp_path / "a.png")
    assert path == tmp_path / "a.png"
    assert_png(path)
    labels = [label for _, label in gate_variants([gates.make("student"), "identity", user], taus=(2.0, 8.0))]
    assert labels == ["student tau=2", "student tau=8", "identity()", "user()"]
    assert [g.params for g, _ in gate_variants("erf", taus=None)] == [{"tau_pos": 10.0, "tau_neg": 12.0}]
    # default "auto": names at 1, 5, 10; gate objects (e.g. a run's gate in `softgate report`) as given
    auto = gate_variants(["erf", gates.make("sigmoid", tau_pos=10.0, tau_neg=12.0)])
    assert [label for _, label in auto] == ["erf tau=1", "erf tau=5", "erf tau=10", "sigmoid(tau_pos=10, tau_neg=12)"]
    with pytest.raises(ValueError, match="unknown gate"):
        plot_gates(["nope"], out=tmp_path / "b.png")


def test_building_the_gates_parser_does_not_import_torch() -> None:
    # Gate names reach argparse through a lazy container: `softgate --help` need not pay for torch.
    import subprocess
    import sys

    code = ("import argparse, sys\n"
            "from softgate.commands import gates\n"
            "gates.add_parser(argparse.ArgumentParser().add_subparsers())\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
