"""A TCP proxy on 127.0.0.1 that holds each new connection for a while
before it forwards a byte: a TLS handshake through it takes at least that
long, as over a slow or loaded link. For tests/security/tls_test.sh.

Usage: slow_proxy.py TARGET_PORT DELAY_S PORT_FILE
Listens on 127.0.0.1:0 and writes its port to PORT_FILE. Each accepted
connection waits DELAY_S seconds, then is joined to 127.0.0.1:TARGET_PORT
(bytes sent in the meantime are kept and forwarded then). A DELAY_S longer
than any client waits makes a listener that accepts and never answers.
Runs until killed.
"""
import asyncio
import os
import sys


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main():
    target_port, delay, port_file = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]

    async def serve(client_reader, client_writer):
        await asyncio.sleep(delay)
        try:
            server_reader, server_writer = await asyncio.open_connection(
                "127.0.0.1", target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, server_writer),
                             pipe(server_reader, client_writer))

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.sockets[0].getsockname()[1]))
    os.rename(port_file + ".tmp", port_file)
    async with server:
        await server.serve_forever()


asyncio.run(main())
