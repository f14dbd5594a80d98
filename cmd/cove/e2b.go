package main

import (
	"fmt"
	"net"
	"net/url"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/e2b"
)

func newE2BCmd(c *cli) *cobra.Command {
	cmd := groupCmd(&cobra.Command{
		Use:   "e2b",
		Short: "The E2B-compatible API: settings for the official E2B SDKs",
		Long: `cove server --e2b-listen ADDR serves the E2B API, so that programs written
for E2B's SDKs run their sandboxes on cove unchanged: 'cove e2b env' prints
the environment they need.`,
	})
	cmd.AddCommand(newE2BEnvCmd(c))
	return cmd
}

func newE2BEnvCmd(c *cli) *cobra.Command {
	var key, addr string
	cmd := &cobra.Command{
		Use:   "env [--key KEY] [--url URL]",
		Short: "Print the export line that points the E2B SDKs at this server",
		Long: `Print E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY as one export line, for
eval "$(cove e2b env)". The key is a new API token of yours (named e2b),
unless --key gives one. The URL is --url, else $COVE_E2B_URL, else the
server's host (from $COVE_ADDR) at port ` + fmt.Sprint(e2b.EnvdPort) + `, where cove server
--e2b-listen should then listen.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			if addr == "" {
				addr = c.getenv("COVE_E2B_URL")
			}
			if addr == "" {
				u, err := url.Parse(clientAddr(c.getenv))
				if err != nil {
					return fmt.Errorf("COVE_ADDR: %w", err)
				}
				addr = u.Scheme + "://" + net.JoinHostPort(u.Hostname(), fmt.Sprint(e2b.EnvdPort))
			}
			if !strings.Contains(addr, "://") {
				addr = "http://" + addr
			}
			addr = strings.TrimRight(addr, "/")
			if key == "" {
				cl, err := c.client(cmd.Context())
				if err != nil {
					return err
				}
				t, err := cl.CreateToken(cmd.Context(), api.CreateTokenRequest{Name: "e2b"})
				if err != nil {
					return fmt.Errorf("mint an API key: %w", err)
				}
				key = t.Secret
			}
			fmt.Fprintf(c.stdout, "export E2B_API_URL=%s E2B_SANDBOX_URL=%s E2B_API_KEY=%s\n", shellQuote(addr), shellQuote(addr), shellQuote(key))
			return nil
		},
	}
	cmd.Flags().StringVar(&key, "key", "", "the API key to print (default: mint a new API token)")
	cmd.Flags().StringVar(&addr, "url", "", "the E2B API's URL (default: $COVE_E2B_URL, else the server's host at port 49983)")
	return cmd
}

// shellQuote quotes s for a POSIX shell where it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/=+@%,") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
