"""gunicorn settings of the `relay` row's two apps: those of maketrigger's servers
(trigger_server/gunicorn_conf.py, worker/gunicorn_conf.py), so the row differs in the app only.
(The controller's worker class adds to this one only an exit when stopped before it has booted:
trigger_server/gunicorn_worker.py.)"""

from worker.serving import NO_FORWARDING, tune_interpreter

workers = 1
worker_class = "worker.gthread_linger.LingeringThreadWorker"  # gthread, see there
threads = 16
timeout = 30
control_socket_disable = True
forwarded_allow_ips, forwarder_headers, secure_scheme_headers, http_protocols = NO_FORWARDING
loglevel = "warning"


def post_worker_init(worker):
    tune_interpreter()
