"""Where `qtrade run --broker ib` connects, the live guard and the kill switch (runtime/trading.py)."""

import pytest

from engine.runtime.trading import KillSwitch, SettingError, connect_settings, is_paper_account, live_guard


def test_flags_beat_the_strategys_broker_section_which_beats_the_environment():
    env = {"QTRADE_IB_HOST": "10.0.0.5", "QTRADE_IB_PORT": "4001", "QTRADE_IB_CLIENT_ID": "9",
           "QTRADE_IB_ACCOUNT": "DU999"}
    c = connect_settings({"port": 4002}, {"client_id": 7, "market_data": "live_or_delayed", "connect_timeout": "3s"},
                         env)
    assert (c.host, c.port, c.client_id, c.account) == ("10.0.0.5", 4002, 7, "DU999")
    assert c.market_data == "live_or_delayed" and c.connect_timeout == 3.0
    assert c.source("port") == "--port" and c.source("client_id") == "broker.client_id in the strategy"
    assert c.source("host") == "QTRADE_IB_HOST"


def test_the_defaults_are_tws_paper_on_this_machine():
    c = connect_settings({}, None, {})
    assert (c.host, c.port, c.client_id, c.account) == ("127.0.0.1", 7497, 1, None)
    assert c.source("port") == "the default"


def test_a_live_run_with_no_port_given_goes_to_tws_live_port():
    c = connect_settings({}, None, {}, live=True)
    assert c.port == 7496 and c.source("port").startswith("the live default (7496")
    for flags, section, env, port in (({"port": 4001}, None, {}, 4001), ({}, {"port": 7497}, {}, 7497),
                                      ({}, None, {"QTRADE_IB_PORT": "4002"}, 4002)):
        assert connect_settings(flags, section, env, live=True).port == port       # a port given is kept


@pytest.mark.parametrize("env, text", [({"QTRADE_IB_PORT": "seventy"}, "QTRADE_IB_PORT: port 'seventy' is not a whole"),
                                       ({"QTRADE_IB_PORT": "70000"}, "QTRADE_IB_PORT: port 70000 is outside 1-65535"),
                                       ({"QTRADE_IB_CLIENT_ID": "-1"}, "client id -1 is outside")])
def test_a_bad_setting_names_where_it_came_from(env, text):
    with pytest.raises(SettingError, match=text):
        connect_settings({}, None, env)


def test_paper_accounts_are_recognised():
    assert is_paper_account("DU1234567") and is_paper_account("df77")
    assert not is_paper_account("U7654321")


def _guard(**kw):
    asked = []
    base = dict(live=False, account="DU1", paper=True, yes=False, tty=True,
                confirm=lambda q: asked.append(q) or kw.pop("answer", False))
    base.update({k: v for k, v in kw.items() if k != "answer"})
    return live_guard(**base), asked


def test_without_live_only_a_paper_account_is_traded():
    assert _guard()[0] is None
    why, _ = _guard(account="U1", paper=False)
    assert "needs --live" in why


def test_live_is_refused_on_a_paper_account_and_without_a_terminal_or_yes():
    assert "is a paper account" in _guard(live=True)[0]
    assert "no terminal" in _guard(live=True, account="U1", paper=False, tty=False)[0]
    assert _guard(live=True, account="U1", paper=False, tty=False, yes=True)[0] is None


def test_live_asks_on_the_terminal_and_a_no_stops_it():
    why, asked = _guard(live=True, account="U1", paper=False, answer=False)
    assert why == "not confirmed: nothing was sent" and "LIVE account U1" in asked[0]
    why, asked = _guard(live=True, account="U1", paper=False, answer=True)
    assert why is None and asked


def test_the_kill_switch_is_the_file(tmp_path):
    ks = KillSwitch(str(tmp_path / "KILL"))
    assert ks.engaged() is None
    (tmp_path / "KILL").write_text("")
    assert "no new entries" in ks.engaged()
    assert KillSwitch(None).engaged() is None


def test_the_margin_gate_follows_the_policy_and_never_lets_live_go_without_margin():
    from engine.brokers.events import Margin
    from engine.runtime.trading import margin_gate

    unknown = lambda order: None          # noqa: E731
    known = lambda order: Margin(5_000.0, 1.0)   # noqa: E731
    funds = lambda: 10_000.0              # noqa: E731
    assert margin_gate("off", paper=True, live=False, what_if=unknown, funds=funds)("o") is None
    assert "required" in margin_gate("required", paper=True, live=False, what_if=unknown, funds=funds)("o")
    assert margin_gate("allow-missing-in-paper", paper=True, live=False, what_if=unknown, funds=funds)("o") is None
    assert "never sends" in margin_gate("allow-missing-in-paper", paper=False, live=True, what_if=unknown,
                                        funds=funds)("o")
    assert margin_gate("required", paper=True, live=False, what_if=known, funds=funds)("o") is None
    assert "above the available funds 1,000.00" in margin_gate("required", paper=True, live=False, what_if=known,
                                                               funds=lambda: 1_000.0)("o")
