# gunicorn settings for Herald's web process (docker-compose.yml, Dockerfile):
#   gunicorn -c deploy/gunicorn.conf.py herald.wsgi:application
# gunicorn believes X-Forwarded-Proto (and sets the request's scheme from it)
# only from the addresses Herald itself trusts: HERALD_TRUSTED_PROXIES, empty
# by default, so from no one. Never "*": any client could then claim HTTPS.
import os

forwarded_allow_ips = ",".join(item.strip() for item in os.environ.get("HERALD_TRUSTED_PROXIES", "").split(",")
                               if item.strip())
