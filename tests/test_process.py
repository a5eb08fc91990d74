"""harness.core.process's ports: what a server could bind, and a port to give one. Real sockets on
127.0.0.1; no server, no TensorFlow."""

import random
import socket
import time

from harness.core.process import _below_ephemeral, free_port, port_free


def test_a_port_whose_server_closed_its_connections_first_is_free_again():
    # A restore stops the PostgreSQL it started, then `--start` starts one on the same port: the
    # connections the old server closed first sit in TIME_WAIT on that port for a minute, and a
    # server (PostgreSQL binds with SO_REUSEADDR) may bind it all the same.
    port = free_port()
    listener = socket.create_server(("127.0.0.1", port))
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server's side closes first: its socket ends in TIME_WAIT on `port`
    time.sleep(0.1)
    client.close()
    listener.close()
    time.sleep(0.1)
    assert port_free("127.0.0.1", port)


def test_a_listening_port_is_taken():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        assert not port_free("127.0.0.1", listener.getsockname()[1])


def test_free_ports_are_under_the_ephemeral_range_and_leave_the_seeded_generator_alone():
    # A seeded training reseeds `random`: drawing ports from it gave every process the same ones.
    random.seed(1)
    expected = random.random()
    random.seed(1)
    port = free_port()
    assert random.random() == expected
    assert port in _below_ephemeral() and port_free("127.0.0.1", port)
