package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/leadstream/leadstream/internal/events"
	"github.com/leadstream/leadstream/internal/marketo/marketotest"
)

// gatewayProc is the gateway binary running as its own process, so a test
// can kill it the hard way.
type gatewayProc struct {
	cmd  *exec.Cmd
	url  string
	logs *bytes.Buffer
	mu   *sync.Mutex
}

var buildOnce sync.Once
var builtBinary string
var buildErr error

func gatewayBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "leadstream-bin-")
		if err != nil {
			buildErr = err
			return
		}
		builtBinary = filepath.Join(dir, "leadstream")
		out, err := exec.Command("go", "build", "-o", builtBinary, "github.com/leadstream/leadstream").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBinary
}

func startProc(t *testing.T, dataDir, addr string) *gatewayProc {
	t.Helper()
	cmd := exec.Command(gatewayBinary(t))
	cmd.Env = append(os.Environ(), "DATA_DIR="+dataDir, "LISTEN_ADDR="+addr, "PUBLIC_URL=http://"+addr,
		"ORGANIZATION_SECRET=org_proc_secret_1", "USER_SECRET=usr_proc_secret_1",
		"MARKETO_HOSTS=127.0.0.1", "EGRESS_ALLOW=127.0.0.0/8",
		"POLLER_MIN_INTERVAL=50ms", "LOG_LEVEL=info")
	p := &gatewayProc{cmd: cmd, url: "http://" + addr, logs: &bytes.Buffer{}, mu: &sync.Mutex{}}
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.logs.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
		}
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(p.url + "/healthz")
		if err == nil {
			resp.Body.Close()
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway process did not start: %v\n%s", err, p.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *gatewayProc) gql(t *testing.T, query string, vars map[string]any, out any) {
	t.Helper()
	gql(t, p.url, p.log, query, vars, out)
}

func (p *gatewayProc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.String()
}

// ingested is the poller's own count of stored activities: a cheap read,
// unlike paging through every event.
func (p *gatewayProc) ingested(t *testing.T, id string) int {
	t.Helper()
	var out struct {
		Instance struct {
			Poller *struct{ EventsIngested int }
		}
	}
	p.gql(t, `query($id: ID!) { instance(id: $id) { poller { eventsIngested } } }`, map[string]any{"id": id}, &out)
	if out.Instance.Poller == nil {
		return 0
	}
	return out.Instance.Poller.EventsIngested
}

// storedEvents pages through every stored event of an instance.
func (p *gatewayProc) storedEvents(t *testing.T, id string) []map[string]any {
	t.Helper()
	return allEvents(t, p.url, p.log, id, "cursor payload")
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// A gateway stopped mid-stream, gracefully or with kill -9, neither loses
// nor duplicates a polled activity.
func TestPollerSurvivesRestarts(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			fm := marketotest.New()
			defer fm.Close()
			fm.AddClient("cid", "csecret")
			fm.SetLatency(15 * time.Millisecond) // pages take a while, so the stop lands mid-stream
			const n = 1500
			dir, addr := t.TempDir(), freeAddr(t)
			p := startProc(t, dir, addr)
			var created struct{ CreateInstance struct{ ID string } }
			p.gql(t, `mutation($in: CreateInstanceInput!) { createInstance(input: $in) { id } }`, map[string]any{"in": map[string]any{
				"connector": map[string]any{"key": "marketo"}, "name": "restart",
				"configuration": map[string]any{"oauth.api.key": "cid", "oauth.api.secret": "csecret",
					"marketo.identity.url": fm.IdentityURL(), "marketo.rest.url": fm.RESTURL(),
					"event.notification.enabled": "true", "event.poller.refresh_interval": "50ms"}}}, &created)
			id := created.CreateInstance.ID
			// The poller reads from the instance's creation on, and Marketo
			// dates activities to the second: these are dated after it.
			after := time.Now().Add(time.Second)
			for i := range n {
				fm.AddLeadActivityAt([]int{12, 13}[i%2], i/2+1, after)
			}
			deadline := time.Now().Add(60 * time.Second)
			before := 0
			for before < 300 {
				before = p.ingested(t, id)
				if time.Now().After(deadline) {
					t.Fatalf("poller never got going:\n%s", p.log())
				}
				time.Sleep(50 * time.Millisecond)
			}
			_ = p.cmd.Process.Signal(sig)
			_ = p.cmd.Wait()
			p2 := startProc(t, dir, addr)
			// The poller's count skips repeats of a page whose token was not
			// saved when the process stopped, so count the stored events.
			deadline = time.Now().Add(90 * time.Second)
			for {
				got := len(p2.storedEvents(t, id))
				if got >= n {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("after restart only %d of %d events", got, n)
				}
				time.Sleep(time.Second)
			}
			time.Sleep(300 * time.Millisecond) // any duplicate would show up now
			evs := p2.storedEvents(t, id)
			guids := map[string]bool{}
			for i, e := range evs {
				if e["cursor"] != events.FormatCursor(int64(i+1)) {
					t.Fatalf("event %d has cursor %v", i, e["cursor"])
				}
				g := e["payload"].(map[string]any)["marketoGUID"].(string)
				if guids[g] {
					t.Fatalf("activity %s stored twice", g)
				}
				guids[g] = true
			}
			if len(evs) != n {
				t.Fatalf("%d events stored, want %d", len(evs), n)
			}
			t.Logf("%s after %d events: %d stored in the end, none lost or repeated", sig, before, len(evs))
		})
	}
}
