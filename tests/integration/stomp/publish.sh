#!/usr/bin/env bash
# A client in another language: plain STOMP 1.2 text frames over bash's /dev/tcp (no library).
# Sends each file as a job message (docs/protocol.md), persistent, with a receipt, and waits for
# every receipt.   publish.sh HOST PORT LOGIN PASSCODE DESTINATION FILE...
set -euo pipefail
host=$1 port=$2 login=$3 passcode=$4 destination=$5
shift 5
exec 3<>"/dev/tcp/$host/$port"
printf 'CONNECT\naccept-version:1.2\nhost:/\nlogin:%s\npasscode:%s\n\n\0' "$login" "$passcode" >&3
IFS= read -r -d '' -u 3 -t 10 frame || { echo "no answer to CONNECT" >&2; exit 1; }
[[ ${frame#$'\n'} == CONNECTED* ]] || { echo "refused: $frame" >&2; exit 1; }
n=0
for file in "$@"; do
  n=$((n + 1))
  printf 'SEND\ndestination:%s\ncontent-type:application/json\npersistent:true\nreceipt:m%d\ncontent-length:%d\n\n' \
    "$destination" "$n" "$(stat -c %s "$file")" >&3
  cat "$file" >&3
  printf '\0' >&3
done
receipts=0
while (( receipts < n )); do
  IFS= read -r -d '' -u 3 -t 20 frame || { echo "missing receipts: $receipts of $n" >&2; exit 1; }
  frame=${frame##$'\n'}
  case $frame in
    RECEIPT*) receipts=$((receipts + 1)) ;;
    ERROR*) echo "server error: $frame" >&2; exit 1 ;;
  esac
done
printf 'DISCONNECT\nreceipt:bye\n\n\0' >&3
echo "receipts $receipts"
