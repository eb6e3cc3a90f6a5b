"""A gRPC client that is not weightd's: Python's grpcio (python3-grpcio),
presenting whatever certificate it is given, with none of the checks
weightd's own client makes first (which refuses an expired certificate of
its own before it connects). For tests/security/tls_test.sh.

Usage: grpc_probe.py ADDRESS [--ca F] [--cert F --key F] [--calls N]
                     [--pause S]
Calls weightd.v1.Weightd/GetStatus N times (default 1), S seconds apart,
over one channel: over plaintext without --ca. Prints "OK" or the first
failure's "CODE: details" and exits 0 or 1.
"""
import argparse
import sys
import time

import grpc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("address")
    ap.add_argument("--ca")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--calls", type=int, default=1)
    ap.add_argument("--pause", type=float, default=0.0)
    ap.add_argument("--ready", help="file created after the first call")
    args = ap.parse_args()

    def read(path):
        with open(path, "rb") as f:
            return f.read()

    if args.ca:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(args.ca),
            private_key=read(args.key) if args.key else None,
            certificate_chain=read(args.cert) if args.cert else None)
        channel = grpc.secure_channel(args.address, credentials)
    else:
        channel = grpc.insecure_channel(args.address)
    # An empty GetStatusRequest is zero bytes; the response is not parsed.
    get_status = channel.unary_unary("/weightd.v1.Weightd/GetStatus",
                                     request_serializer=None,
                                     response_deserializer=None)
    for i in range(args.calls):
        try:
            get_status(b"", timeout=5)
        except grpc.RpcError as e:
            print("%s: %s" % (e.code().name, e.details()), flush=True)
            return 1
        if i == 0 and args.ready:
            open(args.ready, "w").close()
        if i + 1 < args.calls:
            time.sleep(args.pause)
    print("OK", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
