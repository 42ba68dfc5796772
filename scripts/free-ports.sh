# Sourced by the scripts that start servers on loopback: `free_ports COUNT FIRST LAST` prints
# the first COUNT ports of FIRST..LAST on 127.0.0.1 that nothing answers on, one a line, or
# fails saying so. A range well away from the ephemeral ports keeps them from being taken by
# the nodes' own outgoing connections in the meantime.
free_ports() {
    local count=$1 first=$2 last=$3 port found=0
    for port in $(seq "$first" "$last"); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then continue; fi
        echo "$port"
        found=$((found + 1))
        [ "$found" -eq "$count" ] && return 0
    done
    echo "$(basename "$0"): no $count free ports in $first-$last" >&2
    return 1
}
