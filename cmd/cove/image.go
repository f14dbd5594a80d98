package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cove-dev/cove/api"
)

func newImageCmd(c *cli) *cobra.Command {
	cmd := groupCmd(&cobra.Command{
		Use:     "image",
		Aliases: []string{"images"},
		Short:   "List and build images",
	})
	cmd.AddCommand(newImageLsCmd(c), newImageBuildCmd(c))
	return cmd
}

func newImageLsCmd(c *cli) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List built images",
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			imgs, err := cl.ListImages(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				if imgs == nil {
					imgs = []api.Image{}
				}
				return printJSON(c, imgs)
			}
			return writeImageTable(c.stdout, imgs, c.now())
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the images as a JSON array")
	return cmd
}

func newImageBuildCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "build NAME",
		Short: "Build an image (or find it cached) and print its key",
		Long: `Build the named image, or reuse the cached one built from the same inputs.
Progress goes to stderr as it comes; the image key is printed alone on stdout.`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			img, err := cl.BuildImage(cmd.Context(), args[0], func(msg string) {
				fmt.Fprintln(c.stderr, msg)
			})
			if err != nil {
				return err
			}
			fmt.Fprintln(c.stdout, img.Key)
			return nil
		},
	}
}

// writeImageTable writes images as NAME KEY SIZE STORED AGE, keys cut to
// 12.
func writeImageTable(w io.Writer, imgs []api.Image, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "NAME\tKEY\tSIZE\tSTORED\tAGE")
	for _, img := range imgs {
		key := img.Key
		if len(key) > 12 {
			key = key[:12]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", img.Name, key, humanBytes(img.SizeBytes), yesNo(img.Stored), humanAge(now.Sub(img.CreatedAt)))
	}
	return tw.Flush()
}

// yesNo is "yes" or "no": whether something is in the object store.
func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// humanBytes renders n in binary units: 512B, 1.5KiB, 20MiB, 1.2GiB.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	v, i := float64(n), -1
	for v >= unit && i < 4 {
		v /= unit
		i++
	}
	if v >= 10 {
		return fmt.Sprintf("%.0f%ciB", v, "KMGTP"[i])
	}
	return fmt.Sprintf("%.1f%ciB", v, "KMGTP"[i])
}
