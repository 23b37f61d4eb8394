"""Notifications to a real local HTTP receiver: when, what, retries, and that they are queued
in the database with the job's end, so a restarted controller still sends them."""

import logging
import socket
import sys
import threading
import time
import traceback

import pytest

from tests.integration.procs import wait_for
from tests.receiver import Receiver
from trigger_server import cuttable, notify
from trigger_server.notify import IDLE_WAIT, Notifier, describe
from trigger_server.store import JobState, Store, StoreError


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "t.db"))


def ended(store, target, state, error=None, notify=None):
    job, _ = store.create_job(target, {"N": str(len(store.list_jobs()))}, None, "api",
                              notify=notify)
    return store.finish(job.id, state, 2 if state is JobState.FAILED else 0, error)


def pending(store):
    return store.due_notifications(time.time() + 3600)


def diagnosis(store, notifier) -> str:
    """What a failed wait for notifications is told: what is still queued, the lanes, and
    where every thread of the notifier stands (a rare failure left nothing else to go on)."""
    frames = sys._current_frames()
    stacks = [f"--- {t.name}\n" + "".join(traceback.format_stack(frames[t.ident]))
              for t in threading.enumerate()
              if t.name.startswith("notify") and t.ident in frames]
    return (f"queued: {pending(store)}; lanes: {notifier._lanes}; wake set: "
            f"{notifier._wake.is_set()}; unsettled: {notifier._unsettled}\n" + "".join(stacks))


@pytest.fixture
def notifiers():
    made = []
    yield made
    for n in made:
        n.stop()


def test_failures_are_posted_with_a_slack_text(store, receiver, notifiers):
    notifier = Notifier(store, receiver.url, "failure", delays=())
    notifiers.append(notifier)
    notifier.job_ended(ended(store, "site", JobState.SUCCEEDED))
    job = ended(store, "site", JobState.FAILED, "make ended with exit status 2")
    notifier.job_ended(job)
    (got,) = receiver.wait(1)
    assert got["json"]["id"] == job.id and got["json"]["state"] == "failed"
    assert got["json"]["text"] == describe(job)
    assert "job" in got["json"]["text"] and "exit status 2" in got["json"]["text"]


def test_change_notifies_of_a_targets_first_job_unless_it_succeeded(store, receiver,
                                                                      notifiers):
    """A first build that fails is news to whoever chose `change`; a first success is not."""
    notifier = Notifier(store, receiver.url, "change", delays=())
    notifiers.append(notifier)
    notifier.job_ended(ended(store, "site", JobState.SUCCEEDED))
    notifier.job_ended(ended(store, "docs", JobState.FAILED))
    got = receiver.wait(1)
    assert [(g["json"]["target"], g["json"]["state"]) for g in got] == [("docs", "failed")]


def test_change_notifies_only_when_the_result_differs(store, receiver, notifiers):
    notifier = Notifier(store, receiver.url, "change", delays=())
    notifiers.append(notifier)
    states = [JobState.SUCCEEDED, JobState.SUCCEEDED, JobState.FAILED, JobState.FAILED,
              JobState.SUCCEEDED]
    for state in states:
        notifier.job_ended(ended(store, "site", state))
    got = receiver.wait(2)
    assert [g["json"]["state"] for g in got] == ["failed", "succeeded"], diagnosis(store,
                                                                                  notifier)


def test_the_notification_is_queued_in_the_transaction_that_ends_the_job(store, receiver):
    Notifier(store, receiver.url, "always")  # never started: nothing is sent
    job = ended(store, "site", JobState.SUCCEEDED, notify=receiver.url + "/own")
    urls = sorted(url for _, job_id, url, _ in pending(store) if job_id == job.id)
    assert urls == [receiver.url, receiver.url + "/own"]
    assert receiver.received == []


def test_a_restarted_controller_sends_what_the_previous_one_left(tmp_path, receiver, notifiers):
    first = Store(str(tmp_path / "t.db"))
    Notifier(first, receiver.url, "failure")  # the controller that was killed before sending
    job = ended(first, "site", JobState.FAILED)
    again = Store(str(tmp_path / "t.db"))
    notifier = Notifier(again, receiver.url, "failure", delays=())
    notifiers.append(notifier)
    notifier.start_if_pending()
    (got,) = receiver.wait(1)
    assert got["json"]["id"] == job.id
    deadline = time.monotonic() + 10
    while pending(again) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pending(again) == []


def test_a_failed_delivery_is_retried_and_stays_queued_meanwhile(store, notifiers):
    flaky = Receiver(statuses=[500, 503])
    try:
        notifier = Notifier(store, flaky.url, "always", delays=(0.3, 0.3, 0.3))
        job = ended(store, "site", JobState.SUCCEEDED)
        notifier.send_due()
        ((_, job_id, _, attempts),) = pending(store)
        assert (job_id, attempts) == (job.id, 1)
        notifiers.append(notifier)
        notifier.job_ended(job)
        flaky.wait(3)
        assert [g["status"] for g in flaky.received] == [500, 503, 200]
        deadline = time.monotonic() + 10
        while pending(store) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pending(store) == []
    finally:
        flaky.close()


def test_a_delivery_is_given_up_after_its_retries(store):
    down = Receiver(statuses=[503] * 10)
    try:
        notifier = Notifier(store, down.url, "always", delays=(0.0, 0.0))
        ended(store, "site", JobState.SUCCEEDED)
        for _ in range(5):
            notifier.send_due()
        assert len(down.received) == 3 and pending(store) == []
    finally:
        down.close()


def test_receivers_urls_stay_out_of_logs_and_other_receivers(store, caplog):
    """A receiver's URL may be its secret (a Slack webhook's path, a user:password): logs show
    its scheme and host only, and one receiver is not sent another's URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    own = f"http://user:PASSWORD@127.0.0.1:{closed}/hooks/JOB-SECRET?key=KEY"
    flaky = Receiver(statuses=[500])
    try:
        notifier = Notifier(store, flaky.url + "/services/GLOBAL-SECRET", "always",
                            delays=(0.0,))
        ended(store, "site", JobState.FAILED, notify=own)
        with caplog.at_level(logging.WARNING, logger="trigger_server"):
            notifier.send_due()
            notifier.send_due()
        assert [g["status"] for g in flaky.received] == [500, 200]
        assert all("notify" not in g["json"] for g in flaky.received)
        assert f"127.0.0.1:{closed}/…" in caplog.text and flaky.url + "/…" in caplog.text
        for secret in ("PASSWORD", "JOB-SECRET", "KEY", "GLOBAL-SECRET", "/hooks", "/services"):
            assert secret not in caplog.text
    finally:
        flaky.close()


def test_a_refused_delivery_is_not_retried(store):
    refusing = Receiver(statuses=[404])
    try:
        notifier = Notifier(store, refusing.url, "always", delays=(0.0,))
        ended(store, "site", JobState.SUCCEEDED)
        notifier.send_due()
        notifier.send_due()
        assert len(refusing.received) == 1 and pending(store) == []
    finally:
        refusing.close()


def test_a_failing_policy_does_not_keep_the_job_from_ending(store, receiver):
    notifier = Notifier(store, receiver.url, "change")

    def broken(target, before):
        raise RuntimeError("boom")
    store.previous_state = broken
    job = ended(store, "site", JobState.FAILED)
    assert job is not None and store.get_job(job.id).state is JobState.FAILED
    assert pending(store) == [] and notifier.send_due() > 0


def test_an_unusable_url_is_refused_and_holds_up_nothing(store, receiver):
    notifier = Notifier(store, "", "always", delays=(0.0,))
    ended(store, "site", JobState.FAILED, notify="http://" + "a" * 64 + ".example/")
    good = ended(store, "site", JobState.FAILED, notify=receiver.url)
    notifier.send_due()
    assert [g["json"]["id"] for g in receiver.received] == [good.id]
    assert pending(store) == []


class Trickler:
    """A receiver that sends its answer a byte every 50 ms, so no single read ever times out;
    to the first connection, or (`every`) to each."""

    def __init__(self, every=False):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/"
        self.stop = threading.Event()
        self.connections = 0
        self.cut = False
        threading.Thread(target=self._accept, args=(every,), daemon=True).start()

    def _accept(self, every):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()
            if not every:
                return

    def _serve(self, conn):
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 1000:
                if self.stop.wait(0.05):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:  # the sender cut the connection
                    self.cut = True
                    return

    def close(self):
        self.stop.set()
        self.listener.close()


def test_a_receiver_that_trickles_its_answer_is_cut_off_at_the_deadline(store, receiver,
                                                                        caplog):
    slow = Trickler()
    try:
        notifier = Notifier(store, "", "always", delays=(), timeout=0.2)
        ended(store, "site", JobState.FAILED, notify=slow.url)
        good = ended(store, "site", JobState.FAILED, notify=receiver.url)
        started = time.monotonic()
        with caplog.at_level(logging.ERROR, logger="trigger_server"):
            notifier.send_due()
        assert time.monotonic() - started < 5  # the deadline is 0.6 s; the answer takes 50 s
        assert notifier._stuck == 0  # its connection was shut down: no thread left behind
        wait_until = time.monotonic() + 5
        while not slow.cut and time.monotonic() < wait_until:
            time.sleep(0.05)
        assert slow.cut and "no answer within 0.6 s" in caplog.text
        assert [g["json"]["id"] for g in receiver.received] == [good.id]
        assert pending(store) == []  # given up: no retries were asked for
    finally:
        slow.close()


def test_a_post_whose_connection_cannot_be_cut_is_left_behind(store, receiver, monkeypatch):
    """(Through a SOCKS proxy, say): the sender goes on without it, and counts it."""
    monkeypatch.setattr(cuttable.SOCKETS, "cut", lambda thread: False)
    slow = Trickler()
    try:
        notifier = Notifier(store, "", "always", delays=(), timeout=0.2)
        ended(store, "site", JobState.FAILED, notify=slow.url)
        good = ended(store, "site", JobState.FAILED, notify=receiver.url)
        notifier.send_due()
        assert notifier._stuck == 1
        assert [g["json"]["id"] for g in receiver.received] == [good.id]
    finally:
        slow.close()
    deadline = time.monotonic() + 10
    while notifier._stuck and time.monotonic() < deadline:
        time.sleep(0.05)
    assert notifier._stuck == 0  # the abandoned POST's thread ended with the connection


def test_a_notification_sent_but_not_recorded_is_not_sent_again(store, receiver, monkeypatch):
    notifier = Notifier(store, receiver.url, "always", delays=())
    ended(store, "site", JobState.FAILED)
    done = store.notification_done

    def full(notification_id):
        raise StoreError("database write failed: database or disk is full")
    monkeypatch.setattr(store, "notification_done", full)
    for _ in range(3):
        with pytest.raises(StoreError):
            notifier.send_due()
    assert len(receiver.received) == 1 and len(pending(store)) == 1
    monkeypatch.setattr(store, "notification_done", done)
    notifier.send_due()
    assert len(receiver.received) == 1 and pending(store) == []


def test_two_settles_at_once_do_not_delete_the_next_notification_with_its_id(store,
                                                                             monkeypatch):
    """A lane records its notification sent while the sender's look settles too: were both to
    delete it, the second delete would remove the next job's notification, which SQLite gives
    the id the first freed (the flake of test_change_notifies_only_when_the_result_differs)."""
    notifier = Notifier(store, "http://127.0.0.1:9", "always", delays=())
    ended(store, "site", JobState.FAILED)
    ((sent, *_),) = pending(store)
    notifier._unsettled[sent] = None  # POSTed; the lane is recording it
    inside, go_on = threading.Event(), threading.Event()
    done = store.notification_done

    def slow(notification_id):  # the look's delete waits, as behind another writer
        if threading.current_thread().name == "look":
            inside.set()
            go_on.wait(5)
        done(notification_id)
    monkeypatch.setattr(store, "notification_done", slow)
    look = threading.Thread(target=notifier._settle, name="look")
    look.start()
    assert inside.wait(5)
    lane = threading.Thread(target=notifier._settle, name="lane")
    lane.start()
    lane.join(0.3)
    job = ended(store, "site", JobState.FAILED)
    go_on.set()
    look.join(5)
    lane.join(5)
    assert [job_id for _, job_id, _, _ in pending(store)] == [job.id]


def test_a_slow_receiver_delays_only_its_own_notifications(store, receiver, notifiers):
    """A job's own receiver that does not answer (anyone who may trigger can name one) holds
    up its own notifications, not the next job's to another receiver."""
    held = Receiver(hold=1)
    try:
        notifier = Notifier(store, "", "always", delays=(), timeout=20)
        notifiers.append(notifier)
        first = ended(store, "site", JobState.FAILED, notify=held.url)
        notifier.job_ended(first)
        (got,) = held.wait(1)
        assert got["json"]["id"] == first.id  # and unanswered: held until released
        second = ended(store, "site", JobState.FAILED, notify=receiver.url)
        notifier.job_ended(second)
        assert [g["json"]["id"] for g in receiver.wait(1, timeout=5)] == [second.id]
        third = ended(store, "site", JobState.FAILED, notify=held.url)
        notifier.job_ended(third)
        held.release()  # the held receiver gets its next one only after the first
        assert [g["json"]["id"] for g in held.wait(2)] == [first.id, third.id]
    finally:
        held.close()


def test_a_receiver_that_keeps_trickling_holds_one_post_at_most(store, receiver, monkeypatch):
    """Each receiver has at most one POST past its deadline that could not be cut: the next
    ones to it fail at once (and are retried) instead of each holding a thread, so one bad
    receiver cannot use up MAX_STUCK and fail every other receiver's notifications."""
    monkeypatch.setattr(cuttable.SOCKETS, "cut", lambda thread: False)
    slow = Trickler(every=True)
    try:
        notifier = Notifier(store, "", "always", delays=(), timeout=0.2)
        for _ in range(3):
            ended(store, "site", JobState.FAILED, notify=slow.url)
        good = ended(store, "site", JobState.FAILED, notify=receiver.url)
        notifier.send_due()
        assert notifier._stuck == 1 and slow.connections == 1
        assert [g["json"]["id"] for g in receiver.received] == [good.id]
        assert pending(store) == []
    finally:
        slow.close()


def test_receivers_left_for_want_of_a_lane_wait_for_one(store, receiver, monkeypatch):
    """With every lane busy, the sender waits for a lane to end (which wakes it) instead of
    looking again at once, over and over, for the notifications it cannot start yet."""
    monkeypatch.setattr(notify, "MAX_LANES", 1)
    held = Receiver(hold=1)
    try:
        notifier = Notifier(store, "", "always", delays=(), timeout=20)
        first = ended(store, "site", JobState.FAILED, notify=held.url)
        second = ended(store, "site", JobState.FAILED, notify=receiver.url)
        assert notifier.send_due(wait=False) == IDLE_WAIT
        held.wait(1)
        assert receiver.received == []  # no lane for it yet
        held.release()
        notifier.send_due()
        assert [g["json"]["id"] for g in held.received] == [first.id]
        assert [g["json"]["id"] for g in receiver.received] == [second.id]
        assert pending(store) == []
    finally:
        held.close()


def test_a_lane_that_ends_just_after_a_look_gets_its_successor_before_send_due_returns(
        store, receiver, monkeypatch):
    """send_due(wait=True) looks until a look starts no lane. A look that started none
    because every lane was busy, whose busy lane then ended before send_due took stock of the
    lanes running, ended the waiting with the next receiver's notification unsent (the unit
    suite's flake of the test above, once in about eight runs)."""
    monkeypatch.setattr(notify, "MAX_LANES", 1)
    held = Receiver(hold=1)
    try:
        notifier = Notifier(store, "", "always", delays=(), timeout=20)
        ended(store, "site", JobState.FAILED, notify=held.url)
        second = ended(store, "site", JobState.FAILED, notify=receiver.url)
        notifier.send_due(wait=False)
        held.wait(1)
        look = notifier._start_lanes

        def then_the_busy_lane_ends(*args):
            result = look(*args)
            held.release()
            for lane in list(notifier._lanes.values()):
                lane.join()
            return result
        monkeypatch.setattr(notifier, "_start_lanes", then_the_busy_lane_ends)
        notifier.send_due()
        assert [g["json"]["id"] for g in receiver.received] == [second.id]
    finally:
        held.close()


def test_a_lane_that_fails_is_tried_again_after_a_pause_not_at_once(store, receiver, notifiers):
    """A lane that ends with an error (here: the job cannot be read) wakes the sender, which
    waits STORE_RETRY before it starts lanes again, instead of starting it over and over."""
    notifier = Notifier(store, "", "always", delays=())
    notifiers.append(notifier)
    ended(store, "site", JobState.FAILED, notify=receiver.url)
    tries = []

    def broken(job_id):
        tries.append(time.monotonic())
        raise StoreError("database read failed: database disk image is malformed")
    store.get_job = broken
    notifier.start()
    time.sleep(1.0)
    notifier.stop()
    assert len(tries) == 1


def test_a_flood_for_one_receiver_neither_spins_nor_hides_another(store, receiver, notifiers):
    """Hundreds of due notifications for one held receiver (URLs that differ in their path
    only): the next receiver's is still found and sent at once, and the sender waits for the
    held lane instead of looking again and again."""
    held = Receiver(hold=1)
    try:
        notifier = Notifier(store, "", "always", delays=(), timeout=20)
        notifiers.append(notifier)
        for i in range(300):
            ended(store, "site", JobState.FAILED, notify=f"{held.url}/hook/{i}")
        other = ended(store, "site", JobState.FAILED, notify=receiver.url)
        looks = []
        due_receivers = store.due_receivers
        store.due_receivers = lambda *a, **k: looks.append(1) or due_receivers(*a, **k)
        notifier.start()
        held.wait(1)
        assert [g["json"]["id"] for g in receiver.wait(1, timeout=5)] == [other.id]
        time.sleep(1)
        assert len(looks) < 5  # a look, and one when the other receiver's lane ended
    finally:
        held.close()


def test_receivers_that_jobs_named_never_hold_up_the_operators(store, receiver, notifiers):
    """Jobs' own receivers share MAX_LANES lanes; TRIGGER_NOTIFY_URL's has one of its own, so
    even MAX_LANES receivers that never answer do not hold up the operator's alerts."""
    helds = [Receiver(hold=1) for _ in range(notify.MAX_LANES)]
    try:
        notifier = Notifier(store, receiver.url, "always", delays=(), timeout=20)
        notifiers.append(notifier)
        for held in helds:
            notifier.job_ended(ended(store, "site", JobState.FAILED, notify=held.url))
        for held in helds:
            assert len(held.wait(1, timeout=5)) == 1  # each holds its lane
        last = ended(store, "site", JobState.FAILED)
        notifier.job_ended(last)
        deadline = time.monotonic() + 5
        while last.id not in [g["json"]["id"] for g in receiver.received]:
            assert time.monotonic() < deadline, "the operator's alert waits for a lane"
            time.sleep(0.05)
    finally:
        for held in helds:
            held.close()


def test_receivers_that_keep_trickling_cannot_fail_the_operators_alerts(store, receiver,
                                                                       monkeypatch):
    """MAX_STUCK receivers with a POST past its deadline each that could not be cut (one host,
    as many ports): the next POSTs to any other receiver fail at once, not the operator's."""
    monkeypatch.setattr(cuttable.SOCKETS, "cut", lambda thread: False)
    slow = [Trickler() for _ in range(notify.MAX_STUCK)]
    try:
        notifier = Notifier(store, receiver.url, "always", delays=(), timeout=0.2)
        for trickler in slow:
            ended(store, "site", JobState.FAILED, notify=trickler.url)
        notifier.send_due()
        assert notifier._stuck == notify.MAX_STUCK
        last = ended(store, "site", JobState.FAILED)
        notifier.send_due()
        assert last.id in [g["json"]["id"] for g in receiver.received]
    finally:
        for trickler in slow:
            trickler.close()


def test_stop_waits_for_the_posts_under_way(store, notifiers):
    """A stopping controller waits (up to its timeout) for a POST under way to be answered and
    recorded: otherwise the next controller sends it again."""
    held = Receiver(hold=1)
    try:
        notifier = Notifier(store, "", "always", delays=(), timeout=20)
        ended(store, "site", JobState.FAILED, notify=held.url)
        notifier.start()
        held.wait(1)
        threading.Timer(0.5, held.release).start()
        notifier.stop(timeout=5)
        assert pending(store) == []
    finally:
        held.close()


def test_a_receiver_is_its_scheme_host_and_port():
    assert notify.receiver("http://Hooks.example/a") == notify.receiver("HTTP://hooks.example:80/b")
    assert notify.receiver("https://h/") == notify.receiver("https://u:p@h:443/x?y=1")
    assert notify.receiver("http://h/") != notify.receiver("http://h:8080/")
    assert notify.receiver("http://h/") != notify.receiver("https://h/")


def test_notifications_queued_by_an_older_version_are_sent_too(tmp_path, receiver, notifiers):
    """A database whose notifications table has no receiver column yet (queued by a controller
    before lanes): the column is added, the receivers filled in, and they are sent."""
    path = str(tmp_path / "old.db")
    old = Store(path)
    Notifier(old, receiver.url, "always")  # never started: the one that was stopped
    job = ended(old, "site", JobState.FAILED)
    old._conn().executescript("""
        DROP INDEX notifications_receiver;
        ALTER TABLE notifications RENAME TO fresh;
        CREATE TABLE notifications (id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL,
            url TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, due REAL NOT NULL);
        INSERT INTO notifications SELECT id, job_id, url, attempts, due FROM fresh;
        DROP TABLE fresh;
        CREATE INDEX notifications_due ON notifications (due);
    """)
    again = Store(path)
    notifier = Notifier(again, receiver.url, "always", delays=())
    notifiers.append(notifier)
    notifier.start_if_pending()
    (got,) = receiver.wait(1)
    assert got["json"]["id"] == job.id
    # sent, and deleted once the receiver's answer is in (after the receiver saw it)
    wait_for(lambda: again._read("SELECT receiver FROM notifications") == [],
             what="the sent notification's row to go")


def test_the_operators_url_is_a_receiver_of_its_own(store):
    """Other URLs on TRIGGER_NOTIFY_URL's host (any Slack webhook shares hooks.slack.com) do
    not share its lane: a job's notify URL there cannot queue ahead of the operator's."""
    notifier = Notifier(store, "https://hooks.example/services/OPS", "always")
    assert notifier.receiver_of("https://hooks.example/services/OPS") == notify.OPERATOR
    assert notifier.receiver_of("https://hooks.example/services/JOB") == "https://hooks.example:443"
    assert notify.receiver("http://h:0/") != notify.receiver("http://h/")


def test_two_looks_at_once_start_one_lane_for_a_receiver(store, monkeypatch):
    """A caller's send_due while the sender thread looks too (both read the receivers before
    either started a lane): still one lane for the receiver, each notification sent once, and
    every lane ends cleanly."""
    held = Receiver(hold=1)
    errors = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    try:
        notifier = Notifier(store, "", "always", delays=())
        job = ended(store, "site", JobState.FAILED, notify=held.url)
        due_receivers = store.due_receivers

        def slow(*args, **kwargs):
            keys = due_receivers(*args, **kwargs)
            time.sleep(0.3)
            return keys
        store.due_receivers = slow
        notifier.start()
        time.sleep(0.1)
        threading.Timer(1.0, held.release).start()
        notifier.send_due()
        time.sleep(0.5)
        notifier.stop()
        assert errors == []
        assert [g["json"]["id"] for g in held.received] == [job.id]
    finally:
        held.close()


def test_a_store_without_a_notifier_leaves_the_receiver_for_it_to_fill_in(store, receiver,
                                                                          notifiers):
    store.notify_targets = lambda job: [receiver.url]  # as before a Notifier is made
    job = ended(store, "site", JobState.FAILED)
    assert [tuple(r) for r in store._read("SELECT receiver FROM notifications")] == [(None,)]
    notifier = Notifier(store, receiver.url, "always", delays=())
    notifiers.append(notifier)
    notifier.start_if_pending()
    assert [g["json"]["id"] for g in receiver.wait(1)] == [job.id]


def test_receivers_that_keep_trickling_cannot_fail_other_receivers(store, receiver):
    """More receivers than MAX_STUCK that answer a byte at a time, for ever (anyone who may
    trigger can name them): each POST is cut off at its deadline, so none holds a thread and
    another job's receiver still gets its notification."""
    slow = [Trickler(every=True) for _ in range(notify.MAX_STUCK + 1)]
    try:
        notifier = Notifier(store, "", "always", delays=(), timeout=0.2)
        for trickler in slow:
            ended(store, "site", JobState.FAILED, notify=trickler.url)
        notifier.send_due()
        assert notifier._stuck == 0
        good = ended(store, "site", JobState.FAILED, notify=receiver.url)
        notifier.send_due()
        assert [g["json"]["id"] for g in receiver.received] == [good.id]
    finally:
        for trickler in slow:
            trickler.close()
