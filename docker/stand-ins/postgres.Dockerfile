# Stand-in for the official postgres:17 image, for machines that cannot pull it: Debian's
# PostgreSQL server and a docker-entrypoint.sh that honours the same settings the compose file
# uses (POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, PGDATA, /docker-entrypoint-initdb.d/*.sql,
# PGPORT). What differs: PostgreSQL 15 (bookworm's) instead of 17, and no *.sh or *.sql.gz init
# scripts, no POSTGRES_INITDB_ARGS, no locale packages.
FROM debian:bookworm-slim
LABEL org.mlpipe.stand-in="postgres:17 built by docker/bases.sh from Debian's PostgreSQL 15; not the official image"

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /docker-entrypoint-initdb.d /var/run/postgresql /var/lib/postgresql/data \
    && chown -R postgres:postgres /var/run/postgresql /var/lib/postgresql

ENV LANG=C.UTF-8 \
    PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
