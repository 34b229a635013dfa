# One image for every paperec service (streams worker, learner, actor service, simulator).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY base ./base
COPY model ./model
COPY paperec ./paperec
COPY schemas ./schemas
COPY streams ./streams
COPY learner ./learner
COPY actor_service ./actor_service
RUN pip install --no-cache-dir .
RUN useradd --create-home paperec
USER paperec
ENTRYPOINT []
CMD ["paperec", "--help"]
