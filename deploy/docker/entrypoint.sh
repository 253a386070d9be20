#!/bin/sh
# genstack container entrypoint (run under tini, which forwards signals and reaps children).
#
#   (no arguments)      python -m services.$SERVICE $ROLE      (ROLE: grpc or worker)
#   grpc | worker       python -m services.$SERVICE <that role>
#   anything else       runs it as given (e.g. `genstack demo`, `python -m deploy.healthcheck`)
set -eu

if [ "$#" -eq 0 ]; then
    set -- "${ROLE:?set ROLE to grpc or worker}"
fi

case "$1" in
    grpc | worker)
        # exec: the service is the process that receives SIGTERM and drains
        exec python -m "services.${SERVICE:?set SERVICE to a service name, e.g. generator}" "$@"
        ;;
    *)
        exec "$@"
        ;;
esac
