#!/usr/bin/env bash
# Pub/Sub topics and subscriptions, and least-privilege IAM for the service accounts; safe to run again
# (creates what is missing, updates subscriptions in place). Values come from deploy/config.env.
#   deploy/pubsub-iam.sh                   # DELIVERY from config.env (pull: worker pool or GKE)
#   DELIVERY=push deploy/pubsub-iam.sh     # the Cloud Run push service instead
#   GKE=1 deploy/pubsub-iam.sh             # also bind the GKE service accounts through Workload Identity
# One topology per deployment: the other delivery's subscription is deleted if it exists.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
while IFS='=' read -r name value; do
  [[ -n ${!name+set} ]] || export "${name}=${value}"
done < <(grep -E '^[A-Z_][A-Z0-9_]*=' "${here}/config.env")

case "${DELIVERY}" in
  pull)
    subscriptions=("${PULL_SUBSCRIPTION}" "${URGENT_PULL_SUBSCRIPTION}")
    others=("${PUSH_SUBSCRIPTION}" "${URGENT_PUSH_SUBSCRIPTION}")
    ;;
  push)
    subscriptions=("${PUSH_SUBSCRIPTION}" "${URGENT_PUSH_SUBSCRIPTION}")
    others=("${PULL_SUBSCRIPTION}" "${URGENT_PULL_SUBSCRIPTION}")
    ;;
  *)
    echo "DELIVERY must be pull or push, not '${DELIVERY}'" >&2
    exit 2
    ;;
esac

gc() { gcloud --project="${PROJECT}" --quiet "$@"; }
number=$(gc projects describe "${PROJECT}" --format='value(projectNumber)')
pubsub_agent="serviceAccount:service-${number}@gcp-sa-pubsub.iam.gserviceaccount.com"

ensure_topic() { gc pubsub topics describe "$1" >/dev/null 2>&1 || gc pubsub topics create "$1"; }

# Create the subscription to a topic, or update an existing one to the same settings.
ensure_subscription() {
  local name=$1 topic=$2
  shift 2
  if gc pubsub subscriptions describe "${name}" >/dev/null 2>&1; then
    gc pubsub subscriptions update "${name}" "$@"
  else
    gc pubsub subscriptions create "${name}" --topic="${topic}" "$@"
  fi
}

ensure_service_account() {
  local email=$1 id=${1%%@*}
  gc iam service-accounts describe "${email}" >/dev/null 2>&1 ||
    gc iam service-accounts create "${id}" --display-name="fluxfill ${id}"
}

ensure_topic "${TOPIC}"
ensure_topic "${URGENT_TOPIC}"
ensure_topic "${DEAD_LETTER_TOPIC}"
for account in "${BRIDGE_SA}" "${TRITON_SA}" "${PUSH_SA}"; do ensure_service_account "${account}"; done

# Every subscription never expires: Pub/Sub deletes one after 31 days without activity by default (the
# dead-letter subscription is read only when someone looks; an urgent push lane may see no job for a month),
# and what is published to its topic afterwards is lost.
never_expire=(--expiration-period=never)
# The subscription: Pub/Sub's own dead-lettering after SUBSCRIPTION_MAX_DELIVERY_ATTEMPTS (the bridge
# dead-letters a job itself earlier, at MAX_DELIVERY_ATTEMPTS) and exponential retry backoff, so a job
# leased by another bridge is not redelivered in a tight loop.
common=(
  --dead-letter-topic="${DEAD_LETTER_TOPIC}"
  --max-delivery-attempts="${SUBSCRIPTION_MAX_DELIVERY_ATTEMPTS}"
  --min-retry-delay="${MIN_RETRY_BACKOFF_S}s"
  --max-retry-delay="${MAX_RETRY_BACKOFF_S}s"
  --message-retention-duration=7d
  "${never_expire[@]}"
)
# Pull: the bridges pull both lanes and take urgent jobs first. Push has no lanes: both topics are pushed to
# the one endpoint as they come (Triton's request priority still favours urgent ones).
topics=("${TOPIC}" "${URGENT_TOPIC}")
for lane in 0 1; do
  if [[ ${DELIVERY} == pull ]]; then
    ensure_subscription "${subscriptions[lane]}" "${topics[lane]}" "${common[@]}" \
      --ack-deadline="${PULL_ACK_DEADLINE_S}"
  else
    # Push: an OIDC token of PUSH_SA whose audience the bridge checks (FLUXFILL_BRIDGE_PUSH_AUDIENCE).
    ensure_subscription "${subscriptions[lane]}" "${topics[lane]}" "${common[@]}" \
      --ack-deadline="${PUSH_ACK_DEADLINE_S}" \
      --push-endpoint="${PUSH_AUDIENCE}" \
      --push-auth-service-account="${PUSH_SA}" \
      --push-auth-token-audience="${PUSH_AUDIENCE}"
  fi
  other=${others[lane]}
  if gc pubsub subscriptions describe "${other}" >/dev/null 2>&1; then
    echo "deleting ${other}: DELIVERY=${DELIVERY} takes every job through ${subscriptions[*]} alone" >&2
    gc pubsub subscriptions delete "${other}"
  fi
done
# Dead letters stay until someone looks (`fluxfill dlq list` / `replay`); 7 days is Pub/Sub's maximum.
ensure_subscription "${DEAD_LETTER_SUBSCRIPTION}" "${DEAD_LETTER_TOPIC}" \
  --message-retention-duration=7d --ack-deadline=60 "${never_expire[@]}"

# The bridge's ledger of dead-lettered message ids (FLUXFILL_BRIDGE_DEAD_LETTER_LEDGER's default collection),
# in the database the bridge writes (the app's, which may be a named one): Firestore deletes each entry once
# its expireAt passes, a day after Pub/Sub could still redeliver it.
gc firestore fields ttls update expireAt --collection-group=fluxfillDeadLetters --enable-ttl --async \
  --database="${FIRESTORE_DATABASE}"

# The bridges' cancel sweep (FLUXFILL_BRIDGE_CANCEL_SWEEP_S) asks for the queued sessions their app cancelled
# across every user's `sessions` collection (the session template's): Firestore answers such a query only
# from a composite index of collection-group scope (fluxfill.bridge.adapters.cancels_store). One made before
# is left as it is.
if ! made=$(gc firestore indexes composite create --database="${FIRESTORE_DATABASE}" \
    --collection-group=sessions --query-scope=collection-group \
    --field-config=field-path=cancelRequested,order=ascending \
    --field-config=field-path=status,order=ascending --async 2>&1); then
  [[ ${made} == *ALREADY_EXISTS* || ${made} == *"already exists"* ]] || { echo "${made}" >&2; exit 1; }
fi

# Pub/Sub's service agent forwards undeliverable messages: publish on the dead-letter topic, subscribe on
# the subscriptions it takes them from.
gc pubsub topics add-iam-policy-binding "${DEAD_LETTER_TOPIC}" --member="${pubsub_agent}" --role=roles/pubsub.publisher
for subscription in "${subscriptions[@]}"; do
  gc pubsub subscriptions add-iam-policy-binding "${subscription}" \
    --member="${pubsub_agent}" --role=roles/pubsub.subscriber
done

# The bridge: pull its subscriptions, publish dead letters and the copies of jobs waiting for their user's
# running ones (on the job topics), read originals and create results (create-only:
# objectCreator cannot overwrite), read and write session documents, and write metrics and logs.
bridge="serviceAccount:${BRIDGE_SA}"
if [[ ${DELIVERY} == pull ]]; then
  for subscription in "${subscriptions[@]}"; do
    gc pubsub subscriptions add-iam-policy-binding "${subscription}" --member="${bridge}" \
      --role=roles/pubsub.subscriber
  done
fi
for topic in "${DEAD_LETTER_TOPIC}" "${TOPIC}" "${URGENT_TOPIC}"; do
  gc pubsub topics add-iam-policy-binding "${topic}" --member="${bridge}" --role=roles/pubsub.publisher
done
for role in roles/storage.objectViewer roles/storage.objectCreator; do
  gcloud storage buckets add-iam-policy-binding "gs://${BUCKET}" --member="${bridge}" --role="${role}" --quiet
done
for role in roles/datastore.user roles/monitoring.metricWriter roles/logging.logWriter; do
  gc projects add-iam-policy-binding "${PROJECT}" --member="${bridge}" --role="${role}" --condition=None
done

# Triton: read the weights mirror only; write metrics and logs.
triton="serviceAccount:${TRITON_SA}"
gcloud storage buckets add-iam-policy-binding "gs://${WEIGHTS_BUCKET}" --member="${triton}" \
  --role=roles/storage.objectViewer --quiet
for role in roles/monitoring.metricWriter roles/logging.logWriter; do
  gc projects add-iam-policy-binding "${PROJECT}" --member="${triton}" --role="${role}" --condition=None
done
# Cloud Run's bridge variants run Triton under the bridge's account: it reads the weights too.
gcloud storage buckets add-iam-policy-binding "gs://${WEIGHTS_BUCKET}" --member="${bridge}" \
  --role=roles/storage.objectViewer --quiet

# Push: only PUSH_SA may invoke the push service, and Pub/Sub may mint its tokens.
if [[ ${DELIVERY} == push ]]; then
  gc run services add-iam-policy-binding fluxfill-bridge-push --region="${REGION}" \
    --member="serviceAccount:${PUSH_SA}" --role=roles/run.invoker
  gc iam service-accounts add-iam-policy-binding "${PUSH_SA}" --member="${pubsub_agent}" \
    --role=roles/iam.serviceAccountTokenCreator
fi

if [[ ${GKE:-0} == 1 ]]; then
  for pair in "bridge:${BRIDGE_SA}" "triton:${TRITON_SA}"; do
    gc iam service-accounts add-iam-policy-binding "${pair#*:}" --role=roles/iam.workloadIdentityUser \
      --member="serviceAccount:${PROJECT}.svc.id.goog[${GKE_NAMESPACE}/${pair%%:*}]"
  done
fi
