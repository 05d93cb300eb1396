# Herald's production image: one image, the role is chosen by the command
# (web, worker, beat, bounce server, submission server); see docker-compose.yml.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HERALD_VAR_DIR=/var/lib/herald
WORKDIR /app

COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY . .
# Static files are collected at build time and served by whitenoise from the web process.
RUN SECRET_KEY=collectstatic-only STATIC_ROOT=/app/static python manage.py collectstatic --noinput -v0 \
    && useradd --system --home /var/lib/herald herald && mkdir -p /var/lib/herald && chown herald /var/lib/herald
ENV STATIC_ROOT=/app/static
USER herald

EXPOSE 8000 2525
# Forwarded headers are believed only from HERALD_TRUSTED_PROXIES (deploy/gunicorn.conf.py).
CMD ["gunicorn", "-c", "deploy/gunicorn.conf.py", "herald.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3", \
     "--access-logfile", "-"]
