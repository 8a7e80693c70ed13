from telephony.sip.transaction import (
    T1, T2, T4, Input, InviteServerTransaction, NonInviteClientTransaction, NonInviteServerTransaction,
    State, TuEvent,
)


def run_until(tx, end, step=0.01, start=0.0):
    """Advance fake time, firing timers; returns (time, data) of each send."""
    sent = []
    t = start
    while t <= end and not tx.terminated:
        d = tx.deadline()
        if d is None or d > end:
            break
        t = d
        events = tx.handle_timers(t)
        sent += [(round(t, 6), x) for x in tx.outbox]
        tx.outbox.clear()
        if TuEvent.TERMINATED in events:
            return sent, events
    return sent, []


def test_2xx_is_retransmitted_with_timer_g_doubling_to_t2_until_ack():
    tx = InviteServerTransaction(key="k")
    tx.handle(Input.PROVISIONAL, 0.0, b"100")
    tx.handle(Input.SUCCESS, 0.0, b"200")
    assert tx.outbox == [b"100", b"200"]
    tx.outbox.clear()
    sent, _ = run_until(tx, 20.0)
    times = [t for t, _ in sent]
    assert times[:6] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5]  # T1, 2T1, 4T1, T2, T2 ...
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) == T2
    events = tx.handle(Input.ACK, 20.0)
    assert events == [TuEvent.ACK_RECEIVED]
    assert tx.handle(Input.ACK, 20.1) == []  # ACK retransmission absorbed
    tx.handle(Input.REQUEST, 21.0)  # a late INVITE retransmission still gets the 2xx
    assert tx.outbox == [b"200"]
    assert tx.deadline() == 20.0 + 64 * T1  # Timer L, no more Timer G
    _, events = run_until(tx, 100.0, start=20.0)
    assert events == [TuEvent.TERMINATED]


def test_no_ack_within_64_t1_times_out():
    tx = InviteServerTransaction(key="k")
    tx.handle(Input.SUCCESS, 0.0, b"200")
    sent, events = run_until(tx, 100.0)
    assert TuEvent.ACK_TIMEOUT in events
    assert tx.state is State.TERMINATED
    assert sent[-1][0] <= 64 * T1


def test_retransmitted_invite_gets_last_response():
    tx = InviteServerTransaction(key="k")
    tx.handle(Input.PROVISIONAL, 0.0, b"100")
    tx.outbox.clear()
    tx.handle(Input.REQUEST, 0.1)
    assert tx.outbox == [b"100"]
    tx.handle(Input.SUCCESS, 0.2, b"200")
    tx.outbox.clear()
    tx.handle(Input.REQUEST, 0.3)
    assert tx.outbox == [b"200"]


def test_non_2xx_final_then_ack_confirms_and_absorbs_for_t4():
    tx = InviteServerTransaction(key="k")
    tx.handle(Input.FAILURE, 0.0, b"486")
    assert tx.handle(Input.ACK, 0.2) == [TuEvent.ACK_RECEIVED]
    assert tx.state is State.CONFIRMED
    assert tx.handle(Input.ACK, 0.3) == []
    assert tx.deadline() == 0.2 + T4
    _, events = run_until(tx, 10.0, start=0.2)
    assert events == [TuEvent.TERMINATED]


def test_non_invite_server_replays_final_and_ends_after_timer_j():
    tx = NonInviteServerTransaction(key="k")
    tx.handle(Input.SUCCESS, 0.0, b"200")
    tx.outbox.clear()
    tx.handle(Input.REQUEST, 1.0)
    assert tx.outbox == [b"200"]
    assert tx.deadline() == 64 * T1


def test_client_transaction_retransmits_and_stops_on_response():
    tx = NonInviteClientTransaction.start("k", b"BYE", 0.0)
    assert tx.outbox == [b"BYE"]
    tx.outbox.clear()
    sent, _ = run_until(tx, 2.0)
    assert [t for t, _ in sent] == [0.5, 1.5]
    tx.handle(Input.SUCCESS, 2.0)
    assert tx.state is State.COMPLETED
    sent, events = run_until(tx, 10.0, start=2.0)
    assert sent == [] and events == [TuEvent.TERMINATED]


def test_client_transaction_times_out_at_timer_f():
    tx = NonInviteClientTransaction.start("k", b"BYE", 0.0)
    _, events = run_until(tx, 100.0)
    assert events == [TuEvent.TIMEOUT, TuEvent.TERMINATED]
