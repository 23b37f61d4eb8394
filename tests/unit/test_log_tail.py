"""The newest pieces of followed logs, in memory: only while followed, contiguous, bounded."""

from trigger_server.log_tail import LogTail


def test_only_followed_logs_keep_pieces():
    tail = LogTail(keep=100)
    tail.stored(1, 0, b"not kept\n")
    assert tail.read(1, 0, 100) is None
    tail.follow(1)
    tail.stored(1, 9, b"kept\n")
    assert tail.read(1, 9, 100) == b"kept\n"
    assert tail.read(1, 11, 100) == b"pt\n"
    assert tail.read(1, 0, 100) is None  # older than what is kept: read from the database
    assert tail.read(1, 14, 100) == b""  # nothing newer stored yet
    assert tail.read(1, 15, 100) is None  # past the end: not known here
    tail.unfollow(1)
    assert tail.read(1, 9, 100) is None
    assert tail._tails == {}


def test_two_readers_keep_it_until_both_stop():
    tail = LogTail()
    tail.follow(7)
    tail.follow(7)
    tail.stored(7, 0, b"x")
    tail.unfollow(7)
    assert tail.read(7, 0, 100) == b"x"
    tail.unfollow(7)
    assert tail.read(7, 0, 100) is None


def test_a_piece_told_late_does_not_replace_newer_ones():
    tail = LogTail()
    tail.follow(1)
    tail.stored(1, 10, b"newer\n")
    tail.stored(1, 0, b"older note")  # ends where the kept pieces start
    assert tail.read(1, 10, 100) == b"newer\n"
    assert tail.read(1, 16, 100) == b""


def test_the_oldest_pieces_go_past_the_bound_and_a_gap_starts_afresh():
    tail = LogTail(keep=10)
    tail.follow(1)
    for i in range(5):
        tail.stored(1, i * 4, b"%03d\n" % i)
    assert tail.read(1, 20 - 4, 100) == b"004\n"
    assert tail.read(1, 8, 100) == b"002\n003\n004\n"  # to the end of what is kept
    assert tail.read(1, 9, 5) == b"02\n00"  # or to the limit
    assert tail.read(1, 11, 100) == b"\n003\n004\n"
    assert tail.read(1, 4, 100) is None  # 12 bytes were kept; dropping one more leaves 8 < 10
    assert tail._tails[1].size == 12
    tail.stored(1, 100, b"after a gap\n")  # not where the kept pieces end
    assert tail.read(1, 16, 100) is None
    assert tail.read(1, 100, 100) == b"after a gap\n"
    tail.stored(1, 112, b"x" * 50)  # the newest piece stays, however large
    assert tail.read(1, 112, 100) == b"x" * 50 and tail.read(1, 100, 100) is None


def test_a_piece_read_from_its_start_is_not_copied():
    tail = LogTail()
    tail.follow(1)
    piece = b"y" * 1000
    tail.stored(1, 0, piece)
    assert tail.read(1, 0, 1000) is piece
    assert tail.read(1, 0, 999) == piece[:999]
