import pytest

from telephony.ports import PortAllocator, PortsExhausted


def test_even_ports_from_the_range_and_returned_after_use():
    ports = PortAllocator(20001, 20010)
    got = [ports.acquire() for _ in range(4)]
    assert got == [20002, 20004, 20006, 20008]
    with pytest.raises(PortsExhausted):
        ports.acquire()
    ports.release(20004)
    assert ports.acquire() == 20004
    assert ports.in_use == 4


def test_released_ports_go_to_the_back_of_the_line():
    ports = PortAllocator(20000, 20008)
    a = ports.acquire()
    ports.release(a)
    assert ports.acquire() != a
    ports.release(12345)  # unknown: ignored
    assert ports.in_use == 1
