"""The lecture's program prints 18 with the locked numpy on the target Python."""

import runpy


def test_program_prints_18(capsys):
    runpy.run_module("app.program", run_name="__main__")
    assert capsys.readouterr().out == "18\n"
