"""Every flag of every subcommand says in `--help` what it does and what it defaults to."""

from __future__ import annotations

import argparse

import sparse_circuits_cli


def _flags():
    parser = sparse_circuits_cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in commands.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            text = formatter._expand_help(action) if action.help else ""
            yield name, "/".join(action.option_strings) or action.dest, action, text


def test_every_flag_has_help_and_its_default():
    """A flag without help, or whose help hides what happens when it is not given, fails:
    switches and required options need a help line; every other option names its default
    (argparse's or one in words, such as "default: every layer")."""
    missing = []
    for command, flag, action, text in _flags():
        if not text.strip():
            missing.append(f"{command} {flag}: no help")
        elif not action.option_strings or action.nargs == 0 or action.required:
            # positionals, switches and required options have no default
            continue
        elif "default" not in text:
            missing.append(f"{command} {flag} (default {action.default!r}): {text!r}")
    assert not missing, "flags whose --help lacks a default:\n" + "\n".join(missing)


def test_the_walk_sees_every_subcommand_and_catches_a_bare_flag():
    """The check is not vacuous: it walks every command, and a flag without a default in its
    help is reported."""
    commands = {command for command, *_ in _flags()}
    assert commands == set(sparse_circuits_cli.SUBCOMMANDS) - {"info"}  # info has no flags
    parser = argparse.ArgumentParser()
    action = parser.add_argument("--tokens", type=int, default=5, help="tokens to store")
    text = parser._get_formatter()._expand_help(action)
    assert "default" not in text  # what the test above would report
