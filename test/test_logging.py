"""Log level control: configured level, SIGUSR1-style toggling, Twisted chatter filtered."""

import io

from twisted.logger import LogLevel, PredicateResult

from mediaproxy.runtime.log import ConsoleObserver, LogControl, format_line, quiet_twisted


def test_toggle_debug_and_back():
    control = LogControl("WARNING")
    assert control.level is LogLevel.warn and not control.debugging
    assert control.toggle_debug() == "DEBUG" and control.debugging
    assert control.toggle_debug() == "WARNING" and not control.debugging


def test_format_pads_the_level():
    assert format_line({"log_level": LogLevel.warn, "log_format": "relay {ip} gone", "ip": "192.0.2.1"}) == "WARNING  relay 192.0.2.1 gone"


def test_port_chatter_is_dropped_but_not_other_messages():
    noise = {"log_level": LogLevel.info, "log_namespace": "log_legacy", "log_format": "{log_text}", "log_text": "(UDP Port 40000 Closed)"}
    assert quiet_twisted(noise) is PredicateResult.no
    useful = {"log_level": LogLevel.info, "log_namespace": "dispatcher", "log_format": "Relay connected"}
    assert quiet_twisted(useful) is PredicateResult.maybe


def test_journal_lines_carry_the_priority_on_every_line():
    stream = io.StringIO()
    journal = ConsoleObserver(stream, priorities=True)
    journal({"log_level": LogLevel.error, "log_format": "first\nsecond"})
    journal({"log_level": LogLevel.info, "log_format": "fine"})
    assert stream.getvalue() == "<3>ERROR    first\n<3>second\n<6>INFO     fine\n"


def test_events_below_the_process_level_are_dropped_before_any_observer(monkeypatch):
    from mediaproxy.runtime import log

    seen = []
    logger = log.Logger(namespace="relay", observer=seen.append)
    control = LogControl("INFO")
    monkeypatch.setattr(log, "_active", control)
    monkeypatch.setattr(log, "_threshold", 0)
    control.set_level("INFO")
    logger.debug("not built")
    logger.info("kept {n}", n=1)
    assert [event["log_format"] for event in seen] == ["kept {n}"]
    twisted_debug = {"log_level": LogLevel.debug, "log_namespace": "twisted", "log_format": "x"}
    assert log.at_level(twisted_debug) is PredicateResult.no
    control.toggle_debug()
    logger.debug("now built")
    assert seen[-1]["log_format"] == "now built" and log.at_level(twisted_debug) is PredicateResult.maybe


def test_our_loggers_events_carry_what_twisteds_would():
    from twisted.logger import LogPublisher, formatEvent

    from mediaproxy.runtime.log import Logger

    events = []
    publisher = LogPublisher(events.append)
    logger = Logger(namespace="relay", observer=publisher)
    logger.info("Call {call_id} set up", call_id="c1")
    (event,) = events
    assert formatEvent(event) == "Call c1 set up"
    assert (event["log_level"], event["log_namespace"], event["log_logger"]) == (LogLevel.info, "relay", logger)
    assert isinstance(event["log_time"], float) and event["log_source"] is None
    trace: list = []
    logger.warn("traced", log_trace=trace)  # Twisted's tracing of an event through its observers still works
    assert trace and trace[0][0] is logger
