package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/leadstream/leadstream/internal/app/apptest"
	"github.com/leadstream/leadstream/internal/marketo/marketotest"
	"github.com/leadstream/leadstream/internal/store"
)

// natsCluster is a JetStream cluster of servers in the test process, each
// with its own directory, routed to each other on loopback ports.
type natsCluster struct {
	servers []*server.Server
	urls    []string
}

func startNATSCluster(t *testing.T, n int) *natsCluster {
	t.Helper()
	ports := make([]int, n)
	var routes []string
	for i := range ports {
		addr := freeAddr(t)
		ports[i], _ = strconv.Atoi(addr[strings.LastIndex(addr, ":")+1:])
		routes = append(routes, "nats://"+addr)
	}
	c := &natsCluster{}
	for i := range n {
		ns, err := server.NewServer(&server.Options{
			ServerName: fmt.Sprintf("n%d", i), Host: "127.0.0.1", Port: -1,
			JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true, MaxPayload: 2 << 20,
			Cluster: server.ClusterOpts{Name: "leadstream-test", Host: "127.0.0.1", Port: ports[i]},
			Routes:  server.RoutesFromStr(strings.Join(routes, ",")),
		})
		if err != nil {
			t.Fatal(err)
		}
		ns.Start()
		t.Cleanup(ns.Shutdown)
		c.servers = append(c.servers, ns)
	}
	for _, ns := range c.servers {
		if !ns.ReadyForConnections(30 * time.Second) {
			t.Fatal("nats server did not start")
		}
		c.urls = append(c.urls, ns.ClientURL())
	}
	// Ready once JetStream answers through every node (a meta leader was
	// elected and every node knows it).
	waitUntil(t, 30*time.Second, "the NATS cluster to elect a JetStream leader", func() bool {
		// The meta leader knows every peer, with its stats, so that R3
		// streams can be placed.
		peers := 0
		for _, ns := range c.servers {
			if !ns.JetStreamIsCurrent() {
				return false
			}
			if ns.JetStreamIsLeader() {
				peers = len(ns.JetStreamClusterPeers())
			}
		}
		if peers != n {
			return false
		}
		for _, u := range c.urls {
			nc, err := nats.Connect(u)
			if err != nil {
				return false
			}
			js, _ := jetstream.New(nc)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err = js.AccountInfo(ctx)
			cancel()
			nc.Close()
			if err != nil {
				return false
			}
		}
		return true
	})
	return c
}

// replicaProc is one gateway process of the replica set.
type replicaProc struct {
	cmd  *exec.Cmd
	url  string
	mu   sync.Mutex
	logs bytes.Buffer
}

var publicURLRe = regexp.MustCompile(`msg="leadstream listening".* public_url=(\S+)`)

// startReplica runs the gateway binary with env on a port of its choosing
// and returns once it listens.
func startReplica(t *testing.T, env map[string]string) *replicaProc {
	t.Helper()
	cmd := exec.Command(gatewayBinary(t))
	cmd.Env = append(os.Environ(), "DATA_DIR="+t.TempDir(), "PORT=0")
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	p := &replicaProc{cmd: cmd}
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	urlc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.logs.WriteString(line + "\n")
			p.mu.Unlock()
			if m := publicURLRe.FindStringSubmatch(line); m != nil {
				urlc <- m[1]
			}
		}
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			l := p.log()
			t.Logf("log of the replica at %s (tail):\n%s", p.url, l[max(0, len(l)-3000):])
		}
	})
	select {
	case p.url = <-urlc:
	case <-time.After(60 * time.Second):
		t.Fatalf("gateway did not start:\n%s", p.log())
	}
	return p
}

func (p *replicaProc) kill() {
	_ = p.cmd.Process.Kill()
	_ = p.cmd.Wait()
}

func (p *replicaProc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.String()
}

func (p *replicaProc) gql(t *testing.T, query string, vars map[string]any, out any) {
	t.Helper()
	gql(t, p.url, p.log, query, vars, out)
}

// leasesHeld reads the replica's leadstream_leases_held metric.
func (p *replicaProc) leasesHeld() int { return p.metric("leadstream_leases_held") }

// metric reads one of the replica's metrics without labels; -1 if absent.
func (p *replicaProc) metric(name string) int {
	resp, err := http.Get(p.url + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + name + ` (\d+)`).FindSubmatch(b)
	if m == nil {
		return -1
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

func (p *replicaProc) createInstance(t *testing.T, name string, cfg map[string]any) (id, hookPath string) {
	t.Helper()
	var out struct {
		CreateInstance struct{ ID, WebhookURL string }
	}
	p.gql(t, `mutation($in: CreateInstanceInput!) { createInstance(input: $in) { id webhookUrl } }`, map[string]any{"in": map[string]any{
		"connector": map[string]any{"key": "marketo"}, "name": name, "configuration": cfg}}, &out)
	u, err := url.Parse(out.CreateInstance.WebhookURL)
	if err != nil {
		t.Fatal(err)
	}
	return out.CreateInstance.ID, u.RequestURI()
}

// history is every stored event id of an instance, in log order.
func (p *replicaProc) history(t *testing.T, id string) []string {
	t.Helper()
	var ids []string
	for _, n := range allEvents(t, p.url, p.log, id, "id") {
		id, _ := n["id"].(string)
		ids = append(ids, id)
	}
	return ids
}

// waitUntil polls cond until it holds; state, if given, is reported when
// it never does.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool, state ...*string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			st := ""
			if len(state) > 0 {
				st = ": " + *state[0]
			}
			t.Fatalf("timed out after %v waiting for %s%s", d, what, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// poster posts webhooks round-robin over the replicas and remembers the
// ids of the acknowledged ones.
type poster struct {
	mu    sync.Mutex
	acked map[string]bool
	n     atomic.Int64
}

func (ps *poster) post(base, hookPath string) {
	n := ps.n.Add(1)
	resp, err := http.Post(base+hookPath, "application/json", strings.NewReader(fmt.Sprintf(`{"n":%d}`, n)))
	if err != nil {
		return // not acknowledged: the replica is gone
	}
	defer resp.Body.Close()
	var out struct{ ID string }
	if resp.StatusCode != http.StatusAccepted || json.NewDecoder(resp.Body).Decode(&out) != nil || out.ID == "" {
		return
	}
	ps.mu.Lock()
	ps.acked[out.ID] = true
	ps.mu.Unlock()
}

func (ps *poster) ackedIDs() map[string]bool {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	out := make(map[string]bool, len(ps.acked))
	for k := range ps.acked {
		out[k] = true
	}
	return out
}

// collect reads a subscription's event ids in arrival order.
type collector struct {
	mu  sync.Mutex
	ids []string
}

func collect(t *testing.T, sub *apptest.Sub) *collector {
	c := &collector{}
	go func() {
		for {
			m, ok := sub.TryNext(time.Minute)
			if !ok || m.Done || len(m.Errors) > 0 {
				return
			}
			var d struct{ MarketoEvents struct{ ID string } }
			if json.Unmarshal(m.Data, &d) == nil && d.MarketoEvents.ID != "" {
				c.mu.Lock()
				c.ids = append(c.ids, d.MarketoEvents.ID)
				c.mu.Unlock()
			}
		}
	}()
	return c
}

func (c *collector) snapshot() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.ids...)
}

// checkOnce checks that ids hold every acknowledged id exactly once and no
// id twice.
func checkOnce(t *testing.T, who string, ids []string, acked map[string]bool) {
	t.Helper()
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id] {
			t.Fatalf("%s: event %s twice", who, id)
		}
		seen[id] = true
	}
	for id := range acked {
		if !seen[id] {
			t.Fatalf("%s: acknowledged event %s missing (%d of %d acknowledged seen)", who, id, len(ids), len(acked))
		}
	}
}

func hasAll(ids []string, acked map[string]bool) bool {
	seen := map[string]bool{}
	for _, id := range ids {
		seen[id] = true
	}
	for id := range acked {
		if !seen[id] {
			return false
		}
	}
	return true
}

// Three gateway processes on a three-node NATS cluster and one store.
// Webhooks posted round-robin reach the subscribers of every replica once,
// in the same order; kill -9 of a gateway and the loss of a NATS node lose
// no acknowledged event and repeat none; 20 instances on one Marketo stay
// within its limits while the polling lease moves off the killed replica;
// a pending callback survives the replicas' kill -9 and is answered 2xx
// once.
func TestReplicas(t *testing.T) {
	gatewayBinary(t) // build first, outside the timings below
	cluster := startNATSCluster(t, 3)
	uri, stopStore, err := store.StartEmbedded(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopStore)
	fm := marketotest.New()
	t.Cleanup(fm.Close)

	var cbMu sync.Mutex
	cbOK := false
	cbAttempts, cbSuccess := map[string]int{}, map[string]int{}
	cb := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		id := r.Header.Get("webhook-id")
		cbMu.Lock()
		defer cbMu.Unlock()
		cbAttempts[id]++
		if !cbOK {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		cbSuccess[id]++
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(cb.Close)

	env := map[string]string{
		"NATS_URL": strings.Join(cluster.urls, ","), "MONGODB_URI": uri, "MONGODB_DATABASE": "replicas",
		"SECRET_KEY":          "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
		"ORGANIZATION_SECRET": "org_proc_secret_1", "USER_SECRET": "usr_proc_secret_1",
		"POLLER_MIN_INTERVAL": "500ms", "NOTIFY_RETRY_BASE": "1s", "LOG_LEVEL": "info",
		"MARKETO_HOSTS": "127.0.0.1", "EGRESS_ALLOW": "127.0.0.0/8",
	}
	// All three start together: they create the R3 streams and bootstrap
	// the organization from the environment once between them.
	gs := make([]*replicaProc, 3)
	var wg sync.WaitGroup
	for i := range gs {
		wg.Go(func() { gs[i] = startReplica(t, env) })
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	// Streams, consumers and buckets are replicated on all three nodes.
	{
		nc, err := nats.Connect(cluster.urls[0])
		if err != nil {
			t.Fatal(err)
		}
		js, _ := jetstream.New(nc)
		for _, name := range []string{"LEADSTREAM_EVENTS", "LEADSTREAM_ATTEMPTS", "KV_leadstream_deliveries", "KV_leadstream_log", "KV_leases", "KV_poll_requests", "CONTROL"} {
			st, err := js.Stream(context.Background(), name)
			if err != nil {
				t.Fatalf("stream %s: %v", name, err)
			}
			if r := st.CachedInfo().Config.Replicas; r != 3 {
				t.Fatalf("stream %s has %d replicas, want 3", name, r)
			}
		}
		nc.Close()
	}
	marketoCfg := func(client string, events bool) map[string]any {
		fm.AddClient(client, client+"-secret")
		return map[string]any{"oauth.api.key": client, "oauth.api.secret": client + "-secret",
			"marketo.identity.url": fm.IdentityURL(), "marketo.rest.url": fm.RESTURL(),
			"event.notification.enabled": strconv.FormatBool(events), "event.poller.refresh_interval": "1s"}
	}
	// 20 instances on one Marketo, created through every replica.
	fm.ResetStats()
	var polled []string
	for i := range 20 {
		id, _ := gs[i%3].createInstance(t, fmt.Sprintf("polled-%d", i), marketoCfg(fmt.Sprintf("cid-%d", i), true))
		polled = append(polled, id)
	}
	hooks, hookPath := gs[1].createInstance(t, "hooks", marketoCfg("cid-hooks", false))
	cbCfg := marketoCfg("cid-callback", false)
	cbCfg["event.notification.callback.url"] = cb.URL
	cbID, cbHookPath := gs[2].createInstance(t, "callback", cbCfg)
	// The poller reads from an instance's creation on, and Marketo dates
	// activities to the second: these are dated after it.
	after := time.Now().Add(time.Second)
	const perInstance = 30
	for i := range perInstance {
		fm.AddLeadActivityAt([]int{12, 13}[i%2], 500+i, after)
	}

	// Exactly one replica claims the Marketo host.
	holder := -1
	waitUntil(t, 30*time.Second, "a replica to claim the Marketo lease", func() bool {
		n := 0
		for i, g := range gs {
			if g.leasesHeld() == 1 {
				holder, n = i, n+1
			}
		}
		return n == 1
	})
	t.Logf("replica %d holds the Marketo lease", holder)

	// Phase 1: webhooks round-robin, a subscriber on every replica.
	subQuery := `subscription($id: ID!) { marketoEvents(instanceId: $id) { id cursor } }`
	var cols []*collector
	for _, g := range gs {
		cols = append(cols, collect(t, apptest.Subscribe(t, g.url, "graphql-transport-ws", procAuth, subQuery, map[string]any{"id": hooks})))
	}
	for i, g := range gs {
		waitUntil(t, 10*time.Second, fmt.Sprintf("the subscription on replica %d", i), func() bool {
			return g.metric("leadstream_live_subscriptions") == 1
		})
	}
	ps := &poster{acked: map[string]bool{}}
	var pw sync.WaitGroup
	for w := range 3 {
		pw.Go(func() {
			for i := range 50 {
				ps.post(gs[(w+i)%3].url, hookPath)
			}
		})
	}
	pw.Wait()
	phase1 := ps.ackedIDs()
	if len(phase1) != 150 {
		t.Fatalf("%d of 150 webhooks acknowledged with every part up", len(phase1))
	}
	got := ""
	waitUntil(t, 30*time.Second, "every subscriber to receive the 150 webhooks", func() bool {
		got = fmt.Sprintf("%d %d %d", len(cols[0].snapshot()), len(cols[1].snapshot()), len(cols[2].snapshot()))
		return got == "150 150 150"
	}, &got)
	first := cols[0].snapshot()
	for i, c := range cols {
		got := c.snapshot()
		checkOnce(t, fmt.Sprintf("subscriber on replica %d", i), got, phase1)
		if strings.Join(got, ",") != strings.Join(first, ",") {
			t.Fatalf("subscribers on replicas 0 and %d saw the events in different orders", i)
		}
	}

	// Phase 2: posting goes on while the lease holder is killed -9 and a
	// NATS node goes away.
	stopPosting := make(chan struct{})
	for w := range 3 {
		pw.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stopPosting:
					return
				default:
				}
				ps.post(gs[(w+i)%3].url, hookPath)
			}
		})
	}
	waitUntil(t, 30*time.Second, "posting to get going", func() bool { return len(ps.ackedIDs()) >= 250 })
	gs[holder].kill()
	killedAt := time.Now()
	waitUntil(t, 30*time.Second, "posting to go on after the kill", func() bool { return len(ps.ackedIDs()) >= 350 })
	var alive []int
	for i := range gs {
		if i != holder {
			alive = append(alive, i)
		}
	}
	// The lease moves off the killed replica within 30 s. Measured before
	// a NATS node goes too: that costs the lease bucket a leader election,
	// which is not what a replica's death takes.
	waitUntil(t, 30*time.Second-time.Since(killedAt), "the Marketo lease to move to a surviving replica", func() bool {
		return gs[alive[0]].leasesHeld()+gs[alive[1]].leasesHeld() == 1
	})
	t.Logf("the Marketo lease moved %v after the kill", time.Since(killedAt).Round(100*time.Millisecond))
	cluster.servers[1].Shutdown()
	before := len(ps.ackedIDs())
	waitUntil(t, 60*time.Second, "posting to go on after a NATS node went away", func() bool { return len(ps.ackedIDs()) >= before+100 })
	close(stopPosting)
	pw.Wait()
	acked := ps.ackedIDs()
	waitUntil(t, 60*time.Second, "the surviving subscribers to receive every acknowledged webhook", func() bool {
		for _, i := range alive {
			if !hasAll(cols[i].snapshot(), acked) {
				return false
			}
		}
		return true
	})
	a0, a1 := cols[alive[0]].snapshot(), cols[alive[1]].snapshot()
	checkOnce(t, "surviving subscriber", a0, acked)
	checkOnce(t, "surviving subscriber", a1, acked)
	n := min(len(a0), len(a1))
	if strings.Join(a0[:n], ",") != strings.Join(a1[:n], ",") {
		t.Fatal("the surviving subscribers saw the events in different orders")
	}
	checkOnce(t, "history", gs[alive[0]].history(t, hooks), acked)
	t.Logf("%d webhooks acknowledged, each received once by the surviving subscribers and stored once", len(acked))

	// Phase 3: every polled activity once per instance, within the limits.
	waitUntil(t, 60*time.Second, "every instance to ingest every activity", func() bool {
		for _, id := range polled {
			var out struct {
				Instance struct{ Poller *struct{ EventsIngested int } }
			}
			gs[alive[0]].gql(t, `query($id: ID!) { instance(id: $id) { poller { eventsIngested } } }`, map[string]any{"id": id}, &out)
			if out.Instance.Poller == nil || out.Instance.Poller.EventsIngested < perInstance {
				return false
			}
		}
		return true
	})
	for _, id := range polled {
		if got := gs[alive[1]].history(t, id); len(got) != perInstance {
			t.Fatalf("instance %s holds %d events, want %d (each activity once)", id, len(got), perInstance)
		}
	}
	st := fm.Stats()
	if w := st.MaxInWindow(20 * time.Second); w > 50 || st.MaxInFlight > 5 {
		t.Fatalf("Marketo saw %d calls within 20 s and %d at once; the limits are 50 and 5", w, st.MaxInFlight)
	}
	t.Logf("Marketo: %d REST calls, at most %d within 20 s, %d at once", st.RESTCalls, st.MaxInWindow(20*time.Second), st.MaxInFlight)

	// Phase 4: a callback pending at a kill -9 is delivered once after it.
	evID := postOne(t, gs[alive[0]].url+cbHookPath)
	waitUntil(t, 30*time.Second, "a first, refused callback attempt to be recorded", func() bool {
		var out struct{ Deliveries []struct{ EventID string } }
		gs[alive[0]].gql(t, `query($id: ID!) { deliveries(instanceId: $id) { eventId } }`, map[string]any{"id": cbID}, &out)
		return len(out.Deliveries) > 0
	})
	for _, i := range alive {
		gs[i].kill()
	}
	cbMu.Lock()
	cbOK = true
	cbMu.Unlock()
	g := startReplica(t, env)
	waitUntil(t, 60*time.Second, "the pending callback to be delivered after the kill", func() bool {
		cbMu.Lock()
		defer cbMu.Unlock()
		return cbSuccess[evID] > 0
	})
	waitUntil(t, 10*time.Second, "the delivery to be recorded", func() bool {
		var out struct {
			Deliveries []struct {
				EventID    string
				StatusCode *int
			}
		}
		g.gql(t, `query($id: ID!) { deliveries(instanceId: $id) { eventId statusCode } }`, map[string]any{"id": cbID}, &out)
		for _, d := range out.Deliveries {
			if d.EventID == evID && d.StatusCode != nil && *d.StatusCode == http.StatusNoContent {
				return true
			}
		}
		return false
	})
	// A second event through the new replica is delivered too, and only
	// after it: the first is not delivered again meanwhile.
	ev2 := postOne(t, g.url+cbHookPath)
	waitUntil(t, 30*time.Second, "a later callback to be delivered", func() bool {
		cbMu.Lock()
		defer cbMu.Unlock()
		return cbSuccess[ev2] > 0
	})
	cbMu.Lock()
	defer cbMu.Unlock()
	if cbSuccess[evID] != 1 {
		t.Fatalf("the pending callback was answered 2xx %d times, want once", cbSuccess[evID])
	}
	t.Logf("pending callback: %d attempts, answered 2xx once, after the kill", cbAttempts[evID])
}

// postOne posts one webhook that must be acknowledged and returns its id.
func postOne(t *testing.T, u string) string {
	t.Helper()
	resp, err := http.Post(u, "application/json", strings.NewReader(`{"cb":true}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct{ ID string }
	if resp.StatusCode != http.StatusAccepted || json.NewDecoder(resp.Body).Decode(&out) != nil {
		t.Fatalf("callback webhook answered %d", resp.StatusCode)
	}
	return out.ID
}
